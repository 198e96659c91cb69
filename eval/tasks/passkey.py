"""Passkey retrieval over a grid of context lengths × needle depths, exact match, with a heatmap.

    python -m eval passkey --model runs/bct/export --model runs/llama/llama [--lengths 512 1024 2048 4096]

Each cell holds `--samples` examples from `data.synthetic.make_passkey_grid`: held-out text as filler,
the needle "The pass key is <5 digits>." at the given depth (0 = start, 1 = just before the question), then
the question and the answer. Every method sees the same examples (seeded by cell and sample). An example is
correct when every answer token is the argmax prediction (teacher forcing, `eval/scoring.py`); the prompt is
prefilled through the method's own cache (FastKV: compressed to the budget minus the answer's length).

Payload rows: `{method, label, context, depth, samples, correct, accuracy}`. Plot: one heatmap per method
(depth × context length, colour = accuracy).
"""

from __future__ import annotations

import argparse

import numpy as np

from data import make_passkey_grid, passkey_min_length, tokenize_documents
from eval.common import add_model_args, header, methods_from_args, write_outputs
from eval.contenders.methods import BASELINES, Method
from eval.corpus import add_heldout_args, heldout_documents
from eval.report import kv_bytes_table, markdown_table, pivot
from eval.scoring import KVBytes, score_example


def evaluate(methods: list[Method], grid: dict[tuple[int, float], list[dict]]) -> list[dict]:
    rows = []
    for method in methods:
        for (length, depth), examples in grid.items():
            ledger = KVBytes()
            correct = sum(bool(score_example(method, example, ledger).all()) for example in examples)
            rows.append(
                {
                    "method": method.key,
                    "label": method.label,
                    "context": length,
                    "depth": depth,
                    "samples": len(examples),
                    "correct": correct,
                    "accuracy": correct / len(examples),
                    **ledger.as_row(),
                }
            )
        print(f"{method.label}: {[r['accuracy'] for r in rows if r['method'] == method.key]}", flush=True)
    return rows


def markdown(rows: list[dict], methods: list[Method]) -> str:
    by_length: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        by_length.setdefault((row["label"], row["context"]), []).append(row["accuracy"])
    means = [
        {"label": label, "context": length, "accuracy": float(np.mean(values))}
        for (label, length), values in by_length.items()
    ]
    table = pivot(means, "context", "label", "accuracy")
    columns = [("context", "context", "{:,}")] + [(m.label, m.label, "{:.0%}") for m in methods]
    accuracy = "Passkey exact-match accuracy (mean over needle depths):\n\n" + markdown_table(table, columns)
    return accuracy + "\n\n" + kv_bytes_table(rows, methods)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m eval passkey",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(parser, baselines=BASELINES)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--samples", type=int, default=4, help="examples per (length, depth) cell")
    add_heldout_args(parser)
    args = parser.parse_args(argv)

    methods, extra = methods_from_args(args)
    tokenizer = extra["tokenizer"]
    if tokenizer is None:
        parser.error("passkey needs a tokenizer: none of the --model folders has one.")
    if min(args.lengths) <= passkey_min_length(tokenizer):
        parser.error(
            f"every --lengths must exceed {passkey_min_length(tokenizer)} tokens with this tokenizer."
        )
    texts = heldout_documents(args.source, args.validation_fraction, args.cache_dir)
    filler = np.concatenate(tokenize_documents(tokenizer, texts))
    grid = make_passkey_grid(tokenizer, filler, args.lengths, args.depths, args.samples, args.seed)
    rows = evaluate(methods, grid)
    settings = {
        "lengths": args.lengths,
        "depths": args.depths,
        "samples": args.samples,
        "source": args.source,
        "validation_fraction": args.validation_fraction,
        "seed": args.seed,
    }
    payload = {**header("passkey", argv, methods, settings), "rows": rows}
    payload["outputs"] = write_outputs(args.out, payload, markdown(rows, methods))
    return payload
