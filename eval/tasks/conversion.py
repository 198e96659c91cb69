"""Step-0 quality of a converted model: does conversion keep the source model's function? (issue 17)

    python -m eval conversion [--init-from smollm2] [--slots 0 1 8 16 64] [--window 448 --chunk 64]
        [--short 512 --long 2048 --rows 4] [--gate-bias-init -4] [--rule retain [--sink-slots 4]]
        [--read-distance 448]

Before any training, the loss of the source model and of its conversions with each `--slots` on held-out
windows (`eval/corpus.py`; the stdlib by default, the continued-training corpus): `--short` tokens, which the
window covers (W + C >= short), so only the memory differs from the source; and `--long` tokens, where the
reference is the source run as a sliding window of the same span (the conversion with 0 slots). Prints a
markdown table of loss and perplexity.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from eval.corpus import add_heldout_args, heldout_documents, token_windows
from modeling import convert_to_bct
from modeling.convert import load_source
from training.init_source import resolve_source


@torch.no_grad()
def mean_loss(model, ids: torch.Tensor) -> float:
    """Mean next-token cross entropy over (N, T) ids, one row at a time."""
    losses = []
    for row in ids:
        logits = model(row[None], use_cache=False).logits[0, :-1].float()
        losses.append(F.cross_entropy(logits, row[1:]))
    return float(torch.stack(losses).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval conversion", description=__doc__.split("\n")[0])
    parser.add_argument("--init-from", default="smollm2", help="what train.py's init_from takes")
    parser.add_argument("--slots", type=int, nargs="+", default=[0, 1, 8, 16, 64])
    parser.add_argument("--window", type=int, default=448)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--short", type=int, default=512, help="tokens per row the window covers")
    parser.add_argument("--long", type=int, default=2048, help="tokens per row beyond the window (0: skip)")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--gate-bias-init", type=float, default=None, help="memory_gate_bias_init override")
    parser.add_argument("--rule", default=None, help="memory_write_rule override (default: the conversion's)")
    parser.add_argument("--sink-slots", type=int, default=0, help="memory_sink_slots (retain) where M > it")
    parser.add_argument(
        "--read-distance", type=int, default=0, help="memory_read_distance (with sink slots: BOS sinks)"
    )
    add_heldout_args(parser)
    parser.set_defaults(source="stdlib")
    args = parser.parse_args(argv)
    if args.short > args.window + args.chunk:
        parser.error(
            f"--short {args.short} must be covered by the window: at most {args.window + args.chunk}"
        )
    torch.manual_seed(0)

    path, gguf_file = resolve_source(args.init_from)
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
    source = load_source(path, gguf_file).eval()
    texts = heldout_documents(args.source, args.validation_fraction, args.cache_dir)
    lengths = {"short": args.short, **({"long": args.long} if args.long else {})}
    ids = {
        k: torch.tensor(np.stack(token_windows(tokenizer, texts, n, args.rows))) for k, n in lengths.items()
    }

    rows = [("source, full attention", {k: mean_loss(source, v) for k, v in ids.items()})]
    for slots in args.slots:
        overrides = {} if args.gate_bias_init is None else {"memory_gate_bias_init": args.gate_bias_init}
        overrides |= {} if args.rule is None else {"memory_write_rule": args.rule}
        overrides |= {"memory_sink_slots": args.sink_slots} if 0 < args.sink_slots < slots else {}
        overrides |= {"memory_read_distance": args.read_distance}
        bct = convert_to_bct(
            source, memory_slots=slots, window=args.window, chunk_size=args.chunk, **overrides
        )
        label = "source as a sliding window (M = 0)" if slots == 0 else f"converted, M = {slots}"
        rows.append((label, {k: mean_loss(bct, v) for k, v in ids.items()}))
        del bct

    span = f"W = {args.window}, C = {args.chunk}" + (f", rule {args.rule}" if args.rule else "")
    span += f", {args.sink_slots} sink slots" if args.sink_slots else ""
    span += f", memory read at distance {args.read_distance}" if args.read_distance else ""
    print(f"\n{args.init_from}, {args.rows} held-out {args.source} rows per length, {span}, no training\n")
    head = " | ".join(f"{n} tokens: loss | ppl" for n in lengths.values())
    print(f"| model | {head} |\n|---|" + "---|---|" * len(lengths))
    for label, losses in rows:
        cells = " | ".join(f"{losses[k]:.4f} | {math.exp(losses[k]):.2f}" for k in lengths)
        print(f"| {label} | {cells} |")
