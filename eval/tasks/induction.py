"""Induction-copy accuracy by id range: does a model's copy head work on every token a text may hold?

    python -m eval induction --model runs/bench-recall/warmup/llama [--ranges 3:256 3:1024 1024:4096]
    python -m eval induction --model ... --seq-len 512 --induction-segment 128   # longer rows, look-back 8-120
    python -m eval induction --model ... --seq-len 512 --induction-lookback 504  # a repeat a segment, 8-504 back

A row is `data.synthetic.make_induction_example` with its ids drawn from one range `LOW:HIGH` (special ids
left out): random ids whose segments end by repeating an earlier span, so the answers (every repeated id
after a span's first) can only be predicted by copying. A head trained on part of the vocabulary may copy
only that part (docs/design.md §8.7: ids [1,024, 4,096) gave 87% there and 0% on [3, 1,024), where a
passkey's digits are), so the ranges are scored apart. Chance is 1/(ids in the range). Accuracy is per answer
token with teacher forcing (`eval/scoring.py`), over `--samples` rows per range, the same rows for every
method. `--induction-segment G` (default 32, as `data.induction_segment`) puts each repeat 8 to G - 8 tokens
after its original: how far back the copy must look (§8.7: a head trained at 8-24 does not reach 8-120).
`--induction-lookback N` (as `data.induction_lookback`) keeps a repeat per segment but draws each one's source
8 to N tokens back, as far as the row allows.

Payload rows: `{method, label, range, low, high, seq_len, segment, lookback, samples, correct, total, accuracy, chance}`. Plot:
accuracy per range and method.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from data.config import INDUCTION_SEGMENT, INDUCTION_SPAN
from data.synthetic import make_induction_example
from eval.common import add_model_args, header, methods_from_args, write_outputs
from eval.contenders.methods import Method
from eval.report import kv_bytes_table, markdown_table, pivot
from eval.scoring import KVBytes, score_example


def parse_range(text: str) -> tuple[int, int]:
    """`LOW:HIGH` -> (LOW, HIGH), a half-open id range of at least two ids."""
    try:
        low, high = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ranges {text!r}: expected LOW:HIGH, e.g. 3:1024") from None
    if not 0 <= low < high - 1:
        raise argparse.ArgumentTypeError(f"--ranges {text!r}: expected 0 <= LOW < HIGH - 1")
    return low, high


def specials_in(low: int, high: int, special_ids: list[int]) -> list[int]:
    return [s for s in special_ids if low <= s < high]


def range_examples(
    low: int,
    high: int,
    seq_len: int,
    samples: int,
    seed: int,
    special_ids: list[int],
    segment: int,
    lookback: int | None = None,
) -> list[dict[str, torch.Tensor]]:
    """`samples` induction rows of `seq_len` ids from [low, high) but `special_ids`, row k drawn from
    `default_rng([seed, low, high, k])`: the same rows for every method and run."""
    excluded = [s - low for s in specials_in(low, high, special_ids)]
    examples = []
    for k in range(samples):
        rng = np.random.default_rng([seed, low, high, k])
        example = make_induction_example(
            high - low, seq_len, rng, segment=segment, exclude=excluded, lookback=lookback
        )
        labels = example["labels"]  # -100 off the answers
        shifted = {
            "input_ids": example["input_ids"] + low,
            "labels": torch.where(labels >= 0, labels + low, labels),
        }
        examples.append({**example, **shifted})  # ids shifted into the range
    return examples


def evaluate(
    methods: list[Method],
    ranges: list[tuple[int, int]],
    seq_len: int,
    samples: int,
    seed: int,
    special_ids: list[int],
    segment: int = INDUCTION_SEGMENT,
    lookback: int | None = None,
) -> list[dict]:
    rows = []
    for low, high in ranges:
        examples = range_examples(low, high, seq_len, samples, seed, special_ids, segment, lookback)
        allowed = high - low - len(specials_in(low, high, special_ids))
        for method in methods:
            ledger = KVBytes()
            hits = torch.cat([score_example(method, e, ledger) for e in examples])  # (answers,) bool
            rows.append(
                {
                    "method": method.key,
                    "label": method.label,
                    "range": f"[{low:,}, {high:,})",
                    "low": low,
                    "high": high,
                    "seq_len": seq_len,
                    "segment": segment,
                    "lookback": lookback,
                    "samples": samples,
                    "correct": int(hits.sum()),
                    "total": len(hits),
                    "accuracy": float(hits.float().mean()),
                    "chance": 1 / allowed,
                    **ledger.as_row(),
                }
            )
        print(
            f"ids {rows[-1]['range']}: {[round(r['accuracy'], 3) for r in rows[-len(methods) :]]}", flush=True
        )
    return rows


def markdown(rows: list[dict], methods: list[Method]) -> str:
    table = pivot(rows, "range", "label", "accuracy")
    chance = {row["range"]: row["chance"] for row in rows}
    for row in table:
        row["chance"] = chance[row["range"]]
    columns = [("range", "ids", "{}")] + [(m.label, m.label, "{:.0%}") for m in methods]
    columns.append(("chance", "chance", "{:.2%}"))
    accuracy = "Induction-copy accuracy per answer token, by the range the row's ids come from:\n\n"
    return accuracy + markdown_table(table, columns) + "\n\n" + kv_bytes_table(rows, methods)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m eval induction",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(parser, baselines=("full",))
    parser.add_argument(
        "--ranges",
        type=parse_range,
        nargs="+",
        default=[(3, 256), (3, 1024), (1024, 4096)],
        metavar="LOW:HIGH",
        help="half-open id ranges, each scored on its own rows (default: 3:256 3:1024 1024:4096)",
    )
    parser.add_argument(
        "--seq-len", type=int, default=128, help="tokens a row (a multiple of --induction-segment)"
    )
    parser.add_argument(
        "--induction-segment",
        type=int,
        default=INDUCTION_SEGMENT,
        help="tokens a segment; its span of 8 repeats one 8 to segment - 8 back (how far the copy looks)",
    )
    parser.add_argument(
        "--induction-lookback",
        type=int,
        help="draw each repeat's source 8 to this many tokens back, across segments (default: its own segment)",
    )
    parser.add_argument("--samples", type=int, default=32, help="rows per range")
    args = parser.parse_args(argv)
    if not 2 * INDUCTION_SPAN <= args.induction_segment <= args.seq_len:
        parser.error(
            f"--induction-segment {args.induction_segment}: between {2 * INDUCTION_SPAN} (a span of "
            f"{INDUCTION_SPAN} and its repeat) and --seq-len"
        )
    lookback = args.induction_lookback
    if lookback is not None and not INDUCTION_SPAN <= lookback < args.seq_len:
        parser.error(
            f"--induction-lookback {lookback}: between {INDUCTION_SPAN} (the span) and --seq-len - 1"
        )

    methods, extra = methods_from_args(args)
    vocab = min(m.model.config.vocab_size for m in extra["loaded"])
    too_high = [f"{low}:{high}" for low, high in args.ranges if high > vocab]
    if too_high:
        parser.error(f"--ranges {' '.join(too_high)}: ids must lie below the vocabulary size {vocab}")
    tokenizer = extra["tokenizer"]
    special_ids = list(tokenizer.all_special_ids) if tokenizer is not None else []
    rows = evaluate(
        methods,
        args.ranges,
        args.seq_len,
        args.samples,
        args.seed,
        special_ids,
        args.induction_segment,
        lookback,
    )
    settings = {
        "ranges": [list(r) for r in args.ranges],
        "seq_len": args.seq_len,
        "segment": args.induction_segment,
        "lookback": lookback,
        "samples": args.samples,
        "seed": args.seed,
        "special_ids": special_ids,
    }
    payload = {**header("induction", argv, methods, settings), "rows": rows}
    payload["outputs"] = write_outputs(args.out, payload, markdown(rows, methods))
    return payload
