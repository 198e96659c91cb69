"""Recall by distance: accuracy inside the window, within the stacked reach of the windows, and truly far,
with the memory writes closed on the same weights beside it (docs/design.md §8).

    python -m eval recall --model bench-results/recall/models/bct-gated-s0 [--model ...] [--pairs 1 2 4]

Rows come from `data.recall` (a small synthetic vocabulary, `--vocab-size`, default the model's): key-value
rows (`n` pairs, the queries at the end) and passkey rows (a key of `n` tokens after a marker), each answer at
an exact distance `d` from the token it repeats, drawn evenly from three buckets set by the BCT's shape:

| bucket | distances | what can see the token |
|---|---|---|
| near | d < W | the query's own window |
| reach | W <= d < L·(W+C) | the windows of stacked layers, at best (sliding windows and writes-closed runs too) |
| far | d >= L·(W+C) | only the memory |

Accuracy is per answer token, teacher forced, over one full-sequence forward: `argmax(logits[p - 1]) ==
input_ids[p]`. Beside it, three levels that need no binding of keys to values: chance, 1/(distinct
values); "bag of values", 1/n (knowing which values occurred but not which key they belong to); and bag of
values with elimination, H_n/n (also ruling out the values that the earlier answers, seen under teacher
forcing, took: 75% at 2 pairs, 52% at 4). Every model sees the same rows (seeded by task and pairs). A BCT with
memory slots is also run with its writes closed (`eval.contenders.methods.close_writes`, same weights); "—" where it has
no memory or the rule cannot be closed.

Payload rows: `{method, label, variant (open | closed), task, num_pairs, bucket, lo, hi, correct, total,
accuracy, chance, bag, bag_elimination}`; `curve` holds the same per distance bin (`--bin-width`). Plot:
accuracy against distance, one line per method and variant, one panel per task and number of pairs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch

from data.recall import (
    RECALL_TASKS,
    answer_correct,
    distance_buckets,
    make_recall_batch,
    max_recall_pairs,
    recall_token_ranges,
    stacked_reach,
)
from eval.common import header, write_outputs
from eval.contenders.methods import close_writes, load_model
from eval.report import markdown_table

EVAL_STREAM = 0xE7A1  # separates evaluation rows from training rows drawn with the same seed
BUCKET_TITLES = {"near": "near", "reach": "stacked reach", "far": "far"}


def eval_set(
    tasks: Sequence[str],
    vocab_size: int,
    seq_len: int,
    pairs: Sequence[int],
    samples: int,
    buckets: dict[str, tuple[int, int]],
    seed: int,
) -> dict[tuple[str, int], dict[str, torch.Tensor]]:
    """(task, pairs) -> a batch of `samples` rows (`data.recall.make_recall_batch`), the same for every model."""
    ranges = list(buckets.values())
    grid = {}
    for i, task in enumerate(tasks):
        for j, num_pairs in enumerate(pairs):
            rng = np.random.default_rng([seed, EVAL_STREAM, i, j])
            grid[task, num_pairs] = make_recall_batch(
                [task], vocab_size, seq_len, num_pairs, ranges, samples, rng
            )
    return grid


@torch.no_grad()
def answer_hits(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """(N, n) bool: whether `argmax(logits[p - 1]) == input_ids[p]` at each answer position `p`."""
    model.eval()
    hits = []
    for start in range(0, len(batch["input_ids"]), batch_size):
        ids = batch["input_ids"][start : start + batch_size].to(device)  # (b, T)
        positions = batch["answer_positions"][start : start + batch_size].to(device)  # (b, n)
        logits = model(input_ids=ids).logits  # (b, T, V)
        hits.append(answer_correct(logits, ids, positions).cpu())
    return torch.cat(hits)


def summarize(
    hits: torch.Tensor, distances: torch.Tensor, buckets: dict[str, tuple[int, int]]
) -> dict[str, dict[str, int | float | None]]:
    """bucket -> {lo, hi, correct, total, accuracy} over the answers whose distance lies in it."""
    out = {}
    for name, (lo, hi) in buckets.items():
        inside = (distances >= lo) & (distances <= hi)
        correct, total = int(hits[inside].sum()), int(inside.sum())
        out[name] = {
            "lo": lo,
            "hi": hi,
            "correct": correct,
            "total": total,
            "accuracy": _ratio(correct, total),
        }
    return out


def distance_curve(
    hits: torch.Tensor, distances: torch.Tensor, bin_width: int, max_distance: int
) -> list[dict]:
    """Accuracy per distance bin `[lo, lo + bin_width)`, bins holding no answer left out."""
    rows = []
    for lo in range(0, max_distance + 1, bin_width):
        inside = (distances >= lo) & (distances < lo + bin_width)
        if inside.any():
            correct, total = int(hits[inside].sum()), int(inside.sum())
            rows.append(
                {
                    "lo": lo,
                    "hi": lo + bin_width - 1,
                    "correct": correct,
                    "total": total,
                    "accuracy": correct / total,
                }
            )
    return rows


def closed_copy(model: torch.nn.Module) -> tuple[torch.nn.Module | None, str | None]:
    """The same weights with every memory write closed, or (None, why not)."""
    config = model.config
    if config.model_type != "bct" or config.memory_slots == 0:
        return None, "no memory to write"
    return close_writes(model), None


def levels(vocab_size: int, num_pairs: int) -> dict[str, float]:
    """Chance (one of the distinct values), bag of values (one of the row's `num_pairs` values) and bag of
    values with elimination (also ruling out the values already answered, which teacher forcing shows: the
    j-th answer is one of n - j + 1, on average H_n / n, 75% at 2 pairs)."""
    harmonic = sum(1 / k for k in range(1, num_pairs + 1))
    return {
        "chance": 1 / len(recall_token_ranges(vocab_size)["values"]),
        "bag": 1 / num_pairs,
        "bag_elimination": harmonic / num_pairs,
    }


def evaluate_model(
    model: torch.nn.Module,
    grid: dict[tuple[str, int], dict[str, torch.Tensor]],
    buckets: dict[str, tuple[int, int]],
    vocab_size: int,
    bin_width: int,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    closed: bool = True,
) -> tuple[list[dict], list[dict], str | None]:
    """Bucket rows and curve rows (`variant` open, and closed when `closed` and possible) for one model, and
    why writes were not closed (None if they were or were not asked for)."""
    variants: dict[str, torch.nn.Module] = {"open": model}
    why_not = None
    if closed:
        shut, why_not = closed_copy(model)
        if shut is not None:
            variants["closed"] = shut
    rows, curve = [], []
    max_distance = max(hi for _, hi in buckets.values())
    for variant, net in variants.items():
        for (task, num_pairs), batch in grid.items():
            hits = answer_hits(net, batch, batch_size, device)
            base = {"variant": variant, "task": task, "num_pairs": num_pairs, **levels(vocab_size, num_pairs)}
            for bucket, stats in summarize(hits, batch["distances"], buckets).items():
                rows.append({**base, "bucket": bucket, **stats})
            for stats in distance_curve(hits, batch["distances"], bin_width, max_distance):
                curve.append({**base, **stats})
    return rows, curve, why_not


def bucket_table(
    rows: list[dict], buckets: dict[str, tuple[int, int]], extra: Sequence[tuple[str, str, str]] = ()
) -> str:
    """One line per (label, task, pairs): accuracy per bucket, open then closed, chance and bag of values.
    `extra`: further (key, header, format) columns read from the open rows."""
    lines: dict[tuple, dict] = {}
    for row in rows:
        line = lines.setdefault(
            (row["label"], row["task"], row["num_pairs"]),
            {
                "label": row["label"],
                "task": row["task"],
                "num_pairs": row["num_pairs"],
                "chance": row["chance"],
                "bag": row["bag"],
                "bag_elimination": row["bag_elimination"],
            },
        )
        line[f"{row['variant']}:{row['bucket']}"] = row["accuracy"]
        if row["variant"] == "open":
            line.update({key: row[key] for key, _, _ in extra if key in row})
    titles = {
        name: f"{BUCKET_TITLES[name]} {bucket_range(name, lo, hi)}" for name, (lo, hi) in buckets.items()
    }
    columns = [("label", "method", "{}"), ("task", "task", "{}"), ("num_pairs", "pairs", "{}")]
    columns += [(f"open:{name}", titles[name], "{:.0%}") for name in buckets]
    columns += [(f"closed:{name}", f"{titles[name]}, writes closed", "{:.0%}") for name in buckets]
    columns += [
        ("chance", "chance", "{:.1%}"),
        ("bag", "bag of values", "{:.0%}"),
        ("bag_elimination", "bag, elimination", "{:.0%}"),
        *extra,
    ]
    return markdown_table(list(lines.values()), columns)


def bucket_range(name: str, lo: int, hi: int) -> str:
    """`d<32`, `32≤d<96`, `d≥96`: a bucket's distances as its definition states them."""
    return {"near": f"d<{hi + 1}", "reach": f"{lo}≤d<{hi + 1}", "far": f"d≥{lo}"}[name]


def _ratio(correct: int, total: int) -> float | None:
    return correct / total if total else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m eval recall",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", action="append", required=True, metavar="DIR_OR_HUB_ID", help="repeatable")
    parser.add_argument("--tasks", nargs="+", default=list(RECALL_TASKS), choices=RECALL_TASKS)
    parser.add_argument(
        "--pairs", type=int, nargs="+", default=[1, 2, 4], help="pairs per row (passkey: key tokens)"
    )
    parser.add_argument("--samples", type=int, default=256, help="rows per (task, pairs)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument(
        "--vocab-size", type=int, default=None, help="synthetic vocabulary (default: the models')"
    )
    parser.add_argument("--bin-width", type=int, default=16, help="distance bin of the curve")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-results", help="folder for recall.json/.md/.png")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    loaded = [load_model(source, with_tokenizer=False) for source in args.model]
    bct = next((m.model.config for m in loaded if m.is_bct), None)
    if bct is None:
        parser.error(
            "the buckets come from a BCT's window, chunk_size and layers: give at least one BCT model."
        )
    vocab = args.vocab_size or min(m.model.config.vocab_size for m in loaded)
    if max(args.pairs) > max_recall_pairs(vocab):
        parser.error(f"--pairs: at most {max_recall_pairs(vocab)} with a vocabulary of {vocab}.")
    buckets = distance_buckets(bct.window, bct.chunk_size, bct.num_hidden_layers, args.seq_len)
    grid = eval_set(args.tasks, vocab, args.seq_len, args.pairs, args.samples, buckets, args.seed)
    rows, curve, notes = [], [], {}
    for i, entry in enumerate(loaded):
        key, label = f"model-{i}", entry.source
        model = entry.model.to(device)
        model_rows, model_curve, why_not = evaluate_model(
            model, grid, buckets, vocab, args.bin_width, args.batch_size, device
        )
        rows += [{"method": key, "label": label, **row} for row in model_rows]
        curve += [{"method": key, "label": label, **row} for row in model_curve]
        if why_not:
            notes[label] = f"writes not closed: {why_not}"
    settings = {
        "tasks": args.tasks,
        "pairs": args.pairs,
        "samples": args.samples,
        "seq_len": args.seq_len,
        "vocab_size": vocab,
        "bin_width": args.bin_width,
        "seed": args.seed,
        "window": bct.window,
        "chunk_size": bct.chunk_size,
        "num_layers": bct.num_hidden_layers,
        "stacked_reach": stacked_reach(bct.window, bct.chunk_size, bct.num_hidden_layers),
        "buckets": buckets,
    }
    payload = {**header("recall", argv, [], settings), "rows": rows, "curve": curve, "notes": notes}
    payload["methods"] = [{"key": f"model-{i}", "model": m.source} for i, m in enumerate(loaded)]
    text = "Recall accuracy per answer by distance d to the recalled token:\n\n" + bucket_table(rows, buckets)
    text += "".join(f"\n\n{label}: {note}" for label, note in notes.items())
    payload["outputs"] = write_outputs(args.out, payload, text)
    return payload


def resolve_device(name: str) -> torch.device:
    """`auto`: the first CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
