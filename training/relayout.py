"""Lay a trained BCT checkpoint's cache out anew: other memory slots M, window W or chunk C, the weights kept.

    python train.py relayout runs/x/export-best --out runs/x-m32 --memory-slots 32 --chunk-size 16

A BCT checkpoint is continued with the capacity trained into it (`init_from` refuses other capacity fields), so
trading cache entries between kinds at equal bytes (e.g. M 16 -> 32 and C 32 -> 16: 112 entries both) goes
through this step, then a training run from the new folder. Only the memory's per-slot parameters have an M
axis (`SLOT_PARAMETERS`, shape (G, M[, d])): the S sink slots are kept as they are and the retained slots are
resampled along M (new slot i takes old retained slot ⌊i·R/R'⌋, R = M - S). That keeps the slots' meaning only
where a slot is a place for a token rather than a learned address, i.e. under `RELAYOUT_RULES`; W and C have no
parameters. The new model is a starting point for training, not a finished model (measure it after training).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer

from modeling import BCTConfig, BCTForCausalLM

# Rules whose non-sink slots are interchangeable places for evicted tokens (no per-slot write parameters).
RELAYOUT_RULES = ("retain",)
# Parameter names (suffixes) with the slot axis at dim 1: (G, M, d) or (G, M).
SLOT_PARAMETERS = ("memory.init_keys", "memory.init_values", "memory.read_bias")


def resample_slots(tensor: torch.Tensor, sink_slots: int, memory_slots: int) -> torch.Tensor:
    """(G, M, ...) -> (G, memory_slots, ...): the sinks kept, the retained slots resampled by nearest index."""
    old_retained, new_retained = tensor.shape[1] - sink_slots, memory_slots - sink_slots
    index = torch.arange(new_retained) * old_retained // new_retained + sink_slots  # (R',) into the old slots
    return torch.cat((tensor[:, :sink_slots], tensor[:, index]), dim=1)


def relayout_model(
    model: BCTForCausalLM,
    memory_slots: int | None = None,
    window: int | None = None,
    chunk_size: int | None = None,
) -> BCTForCausalLM:
    """A new model with the asked capacity (None: unchanged) and `model`'s weights. Raises ValueError naming
    the field when the rule cannot be laid out anew or the capacity is not valid (BCTConfig's own checks)."""
    config = model.config
    if config.memory_write_rule not in RELAYOUT_RULES:
        raise ValueError(
            f"memory_write_rule = {config.memory_write_rule!r}: a relayout keeps the slots' meaning only under "
            f"{list(RELAYOUT_RULES)} (the other rules learn an address per slot)"
        )
    changes = {"memory_slots": memory_slots, "window": window, "chunk_size": chunk_size}
    fields = config.to_dict() | {k: v for k, v in changes.items() if v is not None}
    # BCTConfig validates on construction: raises naming the field, its value and what is allowed.
    new_config = BCTConfig.from_dict(fields)
    state = model.state_dict()
    if new_config.memory_slots != config.memory_slots:
        for name in state:
            if name.endswith(SLOT_PARAMETERS):
                state[name] = resample_slots(state[name], config.memory_sink_slots, new_config.memory_slots)
    new_model = BCTForCausalLM(new_config).to(next(model.parameters()).dtype)
    new_model.load_state_dict(state, strict=True)
    return new_model.eval()


def relayout_checkpoint(
    source: str | Path, out: str | Path, memory_slots: int | None, window: int | None, chunk_size: int | None
) -> Path:
    """`source` (an exported BCT folder) laid out anew into `out`, with its tokenizer; returns `out`."""
    model = BCTForCausalLM.from_pretrained(source, dtype=torch.float32)
    new_model = relayout_model(model, memory_slots, window, chunk_size)
    out = Path(out)
    new_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    before, after = model.config, new_model.config
    print(
        f"{source} -> {out}: M {before.memory_slots} -> {after.memory_slots}, W {before.window} -> {after.window}, "
        f"C {before.chunk_size} -> {after.chunk_size}; cache entries per layer and head {before.kv_capacity} -> "
        f"{after.kv_capacity}; fp32 cache {before.kv_cache_bytes(dtype=torch.float32):,} -> "
        f"{after.kv_cache_bytes(dtype=torch.float32):,} bytes"
    )
    return out


def relayout_command(argv: list[str]) -> int:
    """`train.py relayout SOURCE --out DIR [--memory-slots M] [--window W] [--chunk-size C]`."""
    parser = argparse.ArgumentParser(
        prog="train.py relayout",
        description="Lay an exported BCT checkpoint's cache out anew (M, W, C), to continue training from it.",
    )
    parser.add_argument("source", help="an exported BCT folder (a run's export or export-best)")
    parser.add_argument(
        "--out", required=True, help="folder for the new checkpoint (init_from of the next run)"
    )
    parser.add_argument("--memory-slots", type=int, default=None, help="M, sinks included")
    parser.add_argument("--window", type=int, default=None, help="W, a multiple of the chunk size")
    parser.add_argument("--chunk-size", type=int, default=None, help="C")
    args = parser.parse_args(argv)
    try:
        relayout_checkpoint(args.source, args.out, args.memory_slots, args.window, args.chunk_size)
    except ValueError as err:
        print(f"relayout: {err}", file=sys.stderr)
        return 2
    return 0
