"""Model and tokenizer for a run: from scratch (a BCTConfig) or continued from a pretrained checkpoint.

Continued training converts ONCE, on the main process, into `output_dir/init/` (weights + tokenizer);
every rank then loads that folder with `from_pretrained`. Under ZeRO-3 `from_pretrained` partitions the
parameters as it loads, which copying a state dict into a freshly built model cannot do (docs/training.md, launch pitfalls).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from data import build_tokenizer, check_vocab_fits
from modeling import BCTConfig, BCTForCausalLM, convert_to_bct
from modeling.convert import load_source
from training.config import (
    RunConfig,
    bct_checkpoint_fields,
    conversion_kwargs,
    model_config_kwargs,
    resolve_init_source,
)


def build_model_and_tokenizer(accelerator: Accelerator, cfg: RunConfig) -> tuple[BCTForCausalLM, Any]:
    if cfg.init_from is None:
        with accelerator.main_process_first():  # the BPE tokenizer is trained once and cached on disk
            tokenizer = build_tokenizer(cfg.data)
        config = BCTConfig(**model_config_kwargs(cfg))
        check_vocab_fits(tokenizer, config.vocab_size)
        # Built whole on every rank from the same seed (not under zero.Init, which initialises differently),
        # so every launch config starts from the same weights; ZeRO partitions them in `prepare`.
        set_seed(cfg.seed)
        return BCTForCausalLM(config), tokenizer

    init_dir = Path(cfg.output_dir) / "init"
    if accelerator.is_main_process:
        convert_once(cfg, init_dir)
    accelerator.wait_for_everyone()
    tokenizer = build_tokenizer(cfg.data, pretrained=str(init_dir))
    model = BCTForCausalLM.from_pretrained(init_dir, dtype=torch.float32)
    check_vocab_fits(tokenizer, model.config.vocab_size)
    return model, tokenizer


def load_init_source(cfg: RunConfig) -> torch.nn.Module:
    """The checkpoint `init_from` names, as its own model (float32, eval mode), e.g. to measure its loss."""
    source, gguf_file = resolve_init_source(cfg.init_from)
    return load_source(source, gguf_file).eval()


def convert_once(cfg: RunConfig, init_dir: Path) -> None:
    """Convert `init_from` into `init_dir` unless an earlier attempt of this run already did."""
    record = {"init_from": cfg.init_from, **conversion_kwargs(cfg)}
    marker = init_dir / "bct_init.json"
    if marker.is_file():
        if json.loads(marker.read_text()) != record:
            raise RuntimeError(
                f"{init_dir} was converted from {json.loads(marker.read_text())}, this run asks for {record}: "
                "use another output_dir"
            )
        return
    source, gguf_file = resolve_init_source(cfg.init_from)
    if bct_checkpoint_fields(cfg.init_from, local_files_only=False) is not None:
        model = BCTForCausalLM.from_pretrained(source, dtype=torch.float32)  # continued as it is
    else:
        model = convert_to_bct(source, gguf_file=gguf_file, **conversion_kwargs(cfg))
    tokenizer = build_tokenizer(cfg.data, pretrained=source, gguf_file=gguf_file)
    tmp = init_dir.with_name(init_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "bct_init.json").write_text(json.dumps(record, indent=2))
    tmp.rename(init_dir)
