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

_SHARED_FIELDS = (*LLAMA_FAMILY_FIELDS, "attention_bias", "mlp_bias")


@torch.no_grad()
def bct_to_llama(bct: PreTrainedModel, check_length: int = 256) -> LlamaForCausalLM:
    """The Llama with `bct`'s weights; raises unless the BCT is memory-free full attention (see module doc)."""
    config = bct.config
    if config.model_type != "bct" or config.memory_slots != 0 or config.qk_norm or config.qkv_bias:
        raise ValueError("to-llama needs a BCT with memory_slots = 0 and no q/k norm or q/k/v-only bias.")
    llama = LlamaForCausalLM(LlamaConfig(**{name: getattr(config, name) for name in _SHARED_FIELDS})).eval()
    weights = {name: t for name, t in bct.state_dict().items() if ".memory." not in name}
    missing, unexpected = llama.load_state_dict(weights, strict=False)
    if unexpected or [name for name in missing if name != "lm_head.weight"]:
        raise ValueError(
            f"Weights do not map onto Llama: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    if config.tie_word_embeddings:
        llama.tie_weights()
    length = min(check_length, config.window + 1)  # every query sees all earlier tokens in the BCT too
    ids = torch.randint(0, config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    gap = (bct(ids).logits - llama(ids).logits).abs().max().item()
    if gap > 1e-3:
        raise ValueError(
            f"The converted Llama's logits differ from the BCT's by {gap:.2e} on {length} tokens."
        )
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
