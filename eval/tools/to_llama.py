"""Turn a full-attention BCT export into a plain `LlamaForCausalLM` folder (weights + tokenizer).

    python -m eval to-llama runs/bench/full/export --out runs/bench/llama

A BCT with `memory_slots = 0` and a window covering its training sequences computes exactly causal
attention with RoPE over those sequences (docs/design.md §6: the weight mapping is one-to-one), so training one
with train.py and converting it gives a same-shape full-attention Llama trained on the same data by the same
loop. The conversion refuses a model with memory slots or a q/k norm, and checks that both models give the
same logits on a random sequence that fits the BCT's window.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from eval.contenders.baselines.sliding import LLAMA_FAMILY_FIELDS
from eval.contenders.methods import load_model
from eval.tools.weight_copy import check_same_logits, copy_weights

_SHARED_FIELDS = (*LLAMA_FAMILY_FIELDS, "attention_bias", "mlp_bias")


@torch.no_grad()
def bct_to_llama(bct: PreTrainedModel, check_length: int = 256) -> LlamaForCausalLM:
    """The Llama with `bct`'s weights; raises unless the BCT is memory-free full attention (see module doc)."""
    config = bct.config
    if config.model_type != "bct" or config.memory_slots != 0 or config.qk_norm or config.qkv_bias:
        raise ValueError("to-llama needs a BCT with memory_slots = 0 and no q/k norm or q/k/v-only bias.")
    llama = LlamaForCausalLM(LlamaConfig(**{name: getattr(config, name) for name in _SHARED_FIELDS})).eval()
    copy_weights(llama, {name: t for name, t in bct.state_dict().items() if ".memory." not in name})
    length = min(check_length, config.window + 1)  # every query sees all earlier tokens in the BCT too
    check_same_logits(bct, llama, length, "The converted Llama")
    return llama


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m eval to-llama",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("export", help="a BCT export folder with memory_slots = 0")
    parser.add_argument("--out", required=True, help="folder for the LlamaForCausalLM (weights + tokenizer)")
    args = parser.parse_args(argv)
    loaded = load_model(args.export)
    llama = bct_to_llama(loaded.model)
    llama.save_pretrained(args.out)
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(args.out)
    print(
        f"wrote {Path(args.out)} (LlamaForCausalLM, {sum(p.numel() for p in llama.parameters()):,} parameters)"
    )
