"""save_pretrained -> AutoModelForCausalLM.from_pretrained(trust_remote_code=True) in a fresh process,
Hub offline, with the project's own packages made unimportable: the folder must stand alone."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import TINY, tiny_model
from .test_equivalence import left_pad
from .test_generate import argmax_loop

REPO = Path(__file__).resolve().parents[2]

LOADER = r"""
import sys, json, torch
class Block:
    # the exported folder must not need this repository's packages
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"modeling", "data", "eval", "train", "training"}:
            raise ImportError(f"blocked import of {name}")
sys.meta_path.insert(0, Block())
from transformers import AutoModelForCausalLM
folder = sys.argv[1]
inputs = torch.load(folder + "/inputs.pt")
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
out = {"class": type(model).__name__, "module": type(model).__module__}
with torch.no_grad():
    out["logits"] = model(inputs["ids"], use_cache=False).logits.tolist()
    out["greedy"] = model.generate(inputs["ids"], max_new_tokens=12, do_sample=False).tolist()
    torch.manual_seed(0)
    out["sample"] = model.generate(inputs["ids"], max_new_tokens=12, do_sample=True, top_k=10).tolist()
    out["beam"] = model.generate(inputs["ids"], max_new_tokens=12, num_beams=3, do_sample=False).tolist()
    out["batch"] = model.generate(inputs["batch"], attention_mask=inputs["mask"], max_new_tokens=12,
                                  do_sample=False).tolist()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_export_loads_in_fresh_process_and_generates(tmp_path):
    model = tiny_model(pad_token_id=0)
    model.save_pretrained(tmp_path)
    ids = torch.randint(1, TINY["vocab_size"], (1, 40))
    batch, mask = left_pad([torch.randint(1, TINY["vocab_size"], (n,)) for n in (9, 21)])
    torch.save({"ids": ids, "batch": batch, "mask": mask}, tmp_path / "inputs.pt")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_bct.BCTConfig",
        "AutoModelForCausalLM": "modeling_bct.BCTForCausalLM",
    }

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["class"] == "BCTForCausalLM" and out["module"].startswith("transformers_modules")
    with torch.no_grad():
        diff = (torch.tensor(out["logits"]) - model(ids, use_cache=False).logits).abs().max()
        assert diff == 0, diff
        assert out["greedy"] == argmax_loop(model, ids, 12).tolist()
        assert out["beam"] == model.generate(ids, max_new_tokens=12, num_beams=3, do_sample=False).tolist()
        expected_batch = model.generate(batch, attention_mask=mask, max_new_tokens=12, do_sample=False)
    assert out["batch"] == expected_batch.tolist()
    assert len(out["sample"][0]) == ids.shape[1] + 12


def test_modeling_imports_only_torch_and_transformers():
    allowed = {"torch", "transformers", "__future__", "math", "dataclasses", "typing", "importlib", "os"}
    for path in sorted((REPO / "modeling").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{path.name} imports {roots - allowed}"
