"""Checks every exported model card must pass: it parses with `huggingface_hub.ModelCard`, its metadata
survives a `ModelCardData` round trip (the Hub's own `card.validate()` needs the network, so the fields are
checked here), its parameter count is the exported model's `num_parameters()`, and it holds no path of the
machine that trained it."""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

from modeling import BCTForCausalLM

MACHINE_PATHS = ("/root", "/home", "/work")


def check_card(export_dir: Path, *machine_paths: Path | str) -> ModelCard:
    text = (export_dir / "README.md").read_text()
    for path in (*MACHINE_PATHS, *map(str, machine_paths)):
        assert path not in text, f"the card holds the machine path {path!r}"
    card = ModelCard.load(export_dir / "README.md")
    data = card.data
    assert ModelCardData(**data.to_dict()).to_dict() == data.to_dict()
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert data.license and data.datasets and data.model_name
    results = data.eval_results
    assert {r.metric_type for r in results} >= {"loss", "perplexity"}
    _, again = model_index_to_eval_results(eval_results_to_model_index(data.model_name, results))
    assert again == results
    (count,) = re.findall(r"\*\*([\d,]+) parameters\*\*", card.text)
    model = BCTForCausalLM.from_pretrained(export_dir)
    assert int(count.replace(",", "")) == model.num_parameters(), (count, model.num_parameters())
    return card
