"""The recall study of issue 10 in one command: small models trained on recall rows alone, then recall by
distance with the writes open and closed on the same weights (docs/design.md §8.3).

    python -m eval recall-study --out bench-results/recall [--rules retain,delta,gated] [--seeds 0,1]
                                [--steps 2500] [--batch-size 32] [--seq-len 96] [--device auto] [--quick]

Every run is the same small BCT (2 layers x 128 hidden, 4 heads, vocabulary 128; M=16 slots, W=16 window,
C=8 chunk, so the stacked reach is L·(W+C) = 48) trained from scratch by a plain PyTorch loop (AdamW, lr 1e-3
constant after 50 warmup steps) with answer-only loss on `data.recall` rows: key-value and passkey, one task
per row, at the number of pairs of `data.recall.RecallCurriculum` (from `--start-pairs` to `--max-pairs`,
doubling whenever the training accuracy of the last `--check-every` steps reaches `--threshold`; the default
starts at the top, 8, because rows of 1-2 pairs let a model stop at guessing among the row's values), plus
`--copy-rows` short copy rows a step (a span repeated inside the window: the induction signal binding needs).
Answer distances are drawn evenly from the three buckets near (d < W), stacked reach (W <= d < L·(W+C)) and
far (d >= L·(W+C)). Methods, each trained for every seed:

| method | model |
|---|---|
| `bct-<rule>` | M slots + W window, `memory_write_rule=<rule>`, one per `--rules` |
| `full` | `memory_slots=0`, window = sequence length: exactly causal full attention |
| `sliding` | `memory_slots=0`, window M + W: a trained sliding window of the same KV bytes (its own stacked reach is L·(M+W+C)) |
| `sinks` | M slots + W window, writes closed in training and evaluation: the slots are learned sinks |

Then `eval.tasks.recall` scores each on the same held-out rows (`--eval-pairs` pairs, `--eval-samples` rows per task
and pairs), writes closed on the same weights beside each BCT rule. Writes `recall-study.json` (every number,
per run and pooled over seeds, the training curves with memory signals, the command), `recall-study.md` (the
table, pooled over seeds) and `recall-study.png` (accuracy against distance, one line per method).

Time. On the 2-core CPU this was written on (1 thread per run, 2 runs at a time, other jobs beside), the
rules `retain` and `delta` with the 3 controls, 2 seeds, 2,500 steps, took 56.6 minutes (9.4 min per
full-attention run, 11.3 per rule); `gated`'s 2 seeds took 16 more with 2 other runs beside, so the
default study of 3 rules takes about 70-75 minutes. On a GPU (`--device auto` picks one) use more `--steps`. `--quick` shrinks
everything (shape, rows, steps) to check the pipeline in seconds.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from data.recall import (
    RECALL_TASKS,
    RecallCurriculum,
    answer_correct,
    distance_buckets,
    make_recall_batch,
    max_recall_pairs,
    stacked_reach,
)
from eval.common import header, write_outputs
from eval.contenders.methods import close_writes
from eval.tasks.recall import bucket_table, eval_set, evaluate_model, resolve_device
from modeling import BCTConfig, BCTForCausalLM
from modeling.configuration_bct import WRITE_RULES
from training.config import OptimConfig
from training.optim import build_optimizer, lr_factor

# `fifo`, the oldest rule, runs on request: --rules retain,delta,gated,fifo
STUDY_RULES = ("retain", "delta", "gated")
TRAIN_STREAM = 0x7EA1  # separates training rows from evaluation rows drawn with the same seed
EVAL_SEED = 1234  # every method and seed is scored on the same rows
# The full-attention twin's chunk: no token ever leaves its window, so any chunk computes the same attention,
# and 64 runs ~30% faster than 16 on CPU.
FULL_CHUNK = 64
DEFAULTS = {
    "steps": 2500,
    "batch_size": 32,
    "seq_len": 96,
    "lr": 1e-3,
    "min_lr_ratio": 1.0,  # constant after warmup: binding appears after a plateau, not near a decayed end
    "warmup_steps": 50,
    "start_pairs": 8,
    "max_pairs": 8,
    "copy_rows": 32,
    "copy_len": 32,
    "copy_span": 8,
    "threshold": 0.9,
    "check_every": 25,
    "log_every": 50,
    "eval_pairs": "1,2,4,8",
    "eval_samples": 192,
    "hidden_size": 128,
    "intermediate_size": 344,
    "layers": 2,
    "heads": 4,
    "vocab_size": 128,
    "memory_slots": 16,
    "window": 16,
    "chunk_size": 8,
}
QUICK = {  # a smoke test of the whole pipeline in seconds (the shape shrinks too, buckets included)
    "steps": 6,
    "batch_size": 4,
    "seq_len": 80,
    "warmup_steps": 2,
    "start_pairs": 1,
    "max_pairs": 2,
    "copy_rows": 2,
    "copy_len": 16,
    "copy_span": 4,
    "check_every": 2,
    "log_every": 3,
    "eval_pairs": "1,2",
    "eval_samples": 12,
    "hidden_size": 32,
    "intermediate_size": 64,
    "memory_slots": 8,
    "window": 16,
    "chunk_size": 8,
    "vocab_size": 64,
}
CONTROLS = ("full", "sliding", "sinks")
LABELS = {"full": "Full attention", "sliding": "Sliding window (M+W)", "sinks": "Sinks (writes closed)"}


@dataclass
class RunSpec:
    """One method: BCTConfig fields on top of the shared shape, and whether its writes stay closed."""

    key: str
    label: str
    fields: dict
    writes_closed: bool = False
    seed: int = 0
    result: dict = field(default_factory=dict)


def method_specs(args: argparse.Namespace) -> list[RunSpec]:
    m, w = args.memory_slots, args.window
    specs = [RunSpec(f"bct-{rule}", f"BCT {rule}", {"memory_write_rule": rule}) for rule in args.rules]
    full = {"memory_slots": 0, "window": args.seq_len, "chunk_size": math.gcd(args.seq_len, FULL_CHUNK)}
    controls = {
        "full": RunSpec("full", LABELS["full"], full),
        "sliding": RunSpec("sliding", LABELS["sliding"], {"memory_slots": 0, "window": m + w}),
        "sinks": RunSpec("sinks", LABELS["sinks"], {"memory_write_rule": "gated"}, writes_closed=True),
    }
    specs += [controls[name] for name in args.controls]
    return [RunSpec(s.key, s.label, s.fields, s.writes_closed, seed) for seed in args.seeds for s in specs]


def build_model(spec: RunSpec, args: argparse.Namespace, device: torch.device) -> BCTForCausalLM:
    torch.manual_seed(spec.seed)
    config = BCTConfig(**{**shape_fields(args), **spec.fields})
    model = BCTForCausalLM(config)
    if spec.writes_closed:  # a runtime switch: the write rule never runs, so its weights get no gradient
        model = close_writes(model)
    return model.to(device).train()


def shape_fields(args: argparse.Namespace) -> dict:
    return {
        "vocab_size": args.vocab_size,
        "hidden_size": args.hidden_size,
        "intermediate_size": args.intermediate_size,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "memory_slots": args.memory_slots,
        "window": args.window,
        "chunk_size": args.chunk_size,
        "tie_word_embeddings": True,
    }


def train_run(spec: RunSpec, args: argparse.Namespace, ranges: list, device: torch.device) -> BCTForCausalLM:
    """Train one run; return the model. `spec.result` gets the training curve, the curriculum's levels
    and the training time."""
    model = build_model(spec, args, device)
    optim_cfg = OptimConfig(lr=args.lr, warmup_steps=args.warmup_steps, min_lr_ratio=args.min_lr_ratio)
    optimizer = build_optimizer(model, optim_cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, optim_cfg, args.steps))
    curriculum = RecallCurriculum(
        start_pairs=args.start_pairs, max_pairs=args.max_pairs, threshold=args.threshold
    )
    history, level_steps = [], [{"step": 0, "pairs": curriculum.num_pairs}]
    correct = total = 0  # answers since the last curriculum check
    logged = {"loss": 0.0, "correct": 0, "total": 0, "steps": 0}
    started = time.perf_counter()
    for step in range(args.steps):
        rng = np.random.default_rng([spec.seed, TRAIN_STREAM, step])
        batch, copies = training_batch(args, curriculum.num_pairs, ranges, rng)
        ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)  # (B, T)
        log_now = (step + 1) % args.log_every == 0 or step + 1 == args.steps
        out = model(input_ids=ids, labels=labels, output_memory_signals=log_now)
        loss = out.loss
        if copies is not None:  # short rows of their own length: a second forward, its loss added
            copy_ids, copy_labels = copies["input_ids"].to(device), copies["labels"].to(device)
            loss = loss + model(input_ids=copy_ids, labels=copy_labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim_cfg.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)

        with torch.no_grad():  # training accuracy on the answers: the curriculum's measure
            positions = batch["answer_positions"].to(device)  # (B, n)
            hits = int(answer_correct(out.logits, ids, positions).sum())
        correct, total = correct + hits, total + positions.numel()
        logged = {
            "loss": logged["loss"] + loss.item(),
            "correct": logged["correct"] + hits,
            "total": logged["total"] + positions.numel(),
            "steps": logged["steps"] + 1,
        }
        if (step + 1) % args.check_every == 0:
            if curriculum.update(correct / total):
                level_steps.append({"step": step + 1, "pairs": curriculum.num_pairs})
            correct = total = 0
        if log_now:
            signals = {f"memory/{k}": float(v) for k, v in (out.memory_signals or {}).items()}
            history.append(
                {
                    "step": step + 1,
                    "loss": logged["loss"] / logged["steps"],
                    "accuracy": logged["correct"] / logged["total"],
                    "pairs": curriculum.num_pairs,
                    "lr": schedule.get_last_lr()[0],
                    **signals,
                }
            )
            logged = {"loss": 0.0, "correct": 0, "total": 0, "steps": 0}
            last = history[-1]
            shown = " ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in signals.items())
            print(
                f"  {spec.key} seed {spec.seed} step {step + 1}: loss {last['loss']:.3f} "
                f"acc {last['accuracy']:.0%} pairs {last['pairs']} {shown}",
                flush=True,
            )
    spec.result = {
        "train_seconds": time.perf_counter() - started,
        "history": history,
        "curriculum": level_steps,
        "final_pairs": curriculum.num_pairs,
        "config": {
            k: v for k, v in model.config.to_dict().items() if k in {*shape_fields(args), "memory_write_rule"}
        },
    }
    return model


def training_batch(
    args: argparse.Namespace, num_pairs: int, ranges: list, rng: np.random.Generator
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """One step's rows: `--batch-size` rows of `--tasks` at `num_pairs`, distances from `ranges` (every
    bucket), and `--copy-rows` short copy rows (`--copy-len` tokens, a span of `--copy-span` repeated inside
    the window), the induction signal binding needs (docs/design.md §8.2); `None` for no copies."""
    recall = make_recall_batch(
        args.tasks, args.vocab_size, args.seq_len, num_pairs, ranges, args.batch_size, rng
    )
    if not args.copy_rows:
        return recall, None
    near = [(args.copy_span, min(args.window - 1, args.copy_len - args.copy_span))]
    copies = make_recall_batch(
        ["copy"], args.vocab_size, args.copy_len, args.copy_span, near, args.copy_rows, rng
    )
    return recall, copies


def pool(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Sum `correct`/`total` over the seeds of each group of `keys`; accuracy = pooled correct / total."""
    groups: dict[tuple, dict] = {}
    for row in rows:
        group = groups.setdefault(
            tuple(row[k] for k in keys),
            {
                **{k: row[k] for k in keys},
                "chance": row["chance"],
                "bag": row["bag"],
                "bag_elimination": row["bag_elimination"],
                "correct": 0,
                "total": 0,
                "seeds": 0,
            },
        )
        group["correct"] += row["correct"]
        group["total"] += row["total"]
        group["seeds"] += 1
        for extra in ("lo", "hi"):
            group.setdefault(extra, row.get(extra))
    for group in groups.values():
        group["accuracy"] = group["correct"] / group["total"] if group["total"] else None
    return list(groups.values())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m eval recall-study",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="bench-results/recall", help="folder for recall-study.json/.md/.png")
    parser.add_argument(
        "--rules",
        default=",".join(STUDY_RULES),
        help=f"write rules, comma-separated (default {','.join(STUDY_RULES)}; known: {','.join(WRITE_RULES)})",
    )
    parser.add_argument(
        "--seeds", default="0,1", help="comma-separated; every method is trained once per seed"
    )
    parser.add_argument(
        "--controls",
        default=",".join(CONTROLS),
        help=f"comma-separated, from {','.join(CONTROLS)}; 'none' for none",
    )
    parser.add_argument(
        "--tasks",
        default=",".join(RECALL_TASKS),
        help=f"drawn uniformly per row, from {','.join(RECALL_TASKS)}",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps per run (default {DEFAULTS['steps']}: the whole default study in ~75 minutes on 2 "
        "shared CPU cores, ~7 on one H200)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help=f"rows per step (default {DEFAULTS['batch_size']})"
    )
    parser.add_argument(
        "--seq-len", type=int, default=None, help=f"tokens per row (default {DEFAULTS['seq_len']})"
    )
    parser.add_argument("--lr", type=float, default=None, help=f"AdamW peak rate (default {DEFAULTS['lr']})")
    parser.add_argument("--warmup-steps", type=int, default=None)
    parser.add_argument(
        "--min-lr-ratio",
        type=float,
        default=None,
        help="cosine decay's floor as a share of --lr (default 1.0: constant after warmup)",
    )
    parser.add_argument(
        "--start-pairs",
        type=int,
        default=None,
        help=f"curriculum's first level (default {DEFAULTS['start_pairs']})",
    )
    parser.add_argument(
        "--max-pairs",
        type=int,
        default=None,
        help=f"curriculum's top level (default {DEFAULTS['max_pairs']})",
    )
    parser.add_argument(
        "--threshold", type=float, default=None, help="accuracy that moves the curriculum up (default 0.9)"
    )
    parser.add_argument(
        "--copy-rows",
        type=int,
        default=None,
        help=f"short copy rows per step beside the recall rows, the induction signal binding needs "
        f"(default {DEFAULTS['copy_rows']}; 0 for none)",
    )
    parser.add_argument(
        "--copy-len", type=int, default=None, help=f"tokens per copy row (default {DEFAULTS['copy_len']})"
    )
    parser.add_argument(
        "--copy-span",
        type=int,
        default=None,
        help=f"tokens per copied span (default {DEFAULTS['copy_span']})",
    )
    parser.add_argument(
        "--check-every", type=int, default=None, help="steps between curriculum checks (default 25)"
    )
    parser.add_argument(
        "--log-every", type=int, default=None, help="steps between logged points (default 50)"
    )
    parser.add_argument(
        "--eval-pairs", default=None, help=f"pairs scored at the end (default {DEFAULTS['eval_pairs']})"
    )
    parser.add_argument(
        "--eval-samples", type=int, default=None, help="rows per task and pairs (default 192)"
    )
    for name in (
        "hidden_size",
        "intermediate_size",
        "layers",
        "heads",
        "vocab_size",
        "memory_slots",
        "window",
        "chunk_size",
    ):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=None, help=f"default {DEFAULTS[name]}"
        )
    parser.add_argument("--bin-width", type=int, default=16, help="distance bin of the plotted curve")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, ...")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs trained at once, one process each (default: 1 on a GPU, else min(2, CPU cores))",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per run (default 1 on CPU: a shared intra-op pool stalls, measured 10x slower; "
        "torch's own on a GPU)",
    )
    parser.add_argument(
        "--save-models",
        action="store_true",
        help="also save each trained model under <out>/models/<method>-s<seed> (weights only: a saved sinks "
        "model loads with its writes open; `eval recall` scores it both ways)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny shapes and steps: checks the pipeline in seconds"
    )
    args = parser.parse_args(argv)
    for name, value in {**DEFAULTS, **(QUICK if args.quick else {})}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    on_gpu = resolve_device(args.device).type == "cuda"
    if args.jobs is None:
        args.jobs = 1 if on_gpu else min(2, os.cpu_count() or 1)
    if args.threads is None and not on_gpu:
        args.threads = 1
    args.rules = [r for r in args.rules.split(",") if r]
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.controls = [c for c in args.controls.split(",") if c and c != "none"]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.eval_pairs = [int(p) for p in str(args.eval_pairs).split(",") if p]
    check(parser, args)
    return args


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fail before training: every value named with what is allowed."""
    for rule in args.rules:
        if rule not in WRITE_RULES:
            parser.error(f"--rules {rule!r} is not allowed: one of {list(WRITE_RULES)}.")
    for control in args.controls:
        if control not in CONTROLS:
            parser.error(f"--controls {control!r} is not allowed: from {list(CONTROLS)}, or none.")
    for task in args.tasks:
        if task not in RECALL_TASKS:
            parser.error(f"--tasks {task!r} is not allowed: one of {list(RECALL_TASKS)}.")
    if not args.seeds or not args.tasks:
        parser.error("--seeds and --tasks need at least one value each.")
    if args.seq_len % args.chunk_size:
        parser.error(
            f"--seq-len {args.seq_len} is not allowed: a multiple of --chunk-size {args.chunk_size}."
        )
    if (args.memory_slots + args.window) % args.chunk_size:
        parser.error(
            f"--memory-slots {args.memory_slots} is not allowed: memory_slots + window a multiple of --chunk-size "
            f"{args.chunk_size} (the sliding-window control's window, of equal KV bytes)."
        )
    if args.copy_rows < 0:
        parser.error(f"--copy-rows {args.copy_rows} is not allowed: a count >= 0.")
    if args.copy_rows:
        if args.copy_len % args.chunk_size:
            parser.error(
                f"--copy-len {args.copy_len} is not allowed: a multiple of --chunk-size {args.chunk_size}."
            )
        if not 2 <= args.copy_span <= min(args.window - 1, args.copy_len // 2):
            parser.error(
                f"--copy-span {args.copy_span} is not allowed: between 2 and min(window - 1, copy_len / 2) = "
                f"{min(args.window - 1, args.copy_len // 2)} (the copy inside the window)."
            )
    reach = stacked_reach(args.window, args.chunk_size, args.layers)
    if not 1 <= args.start_pairs <= args.max_pairs:
        parser.error(
            f"--start-pairs {args.start_pairs} is not allowed: between 1 and --max-pairs {args.max_pairs}."
        )
    top = max(args.max_pairs, *args.eval_pairs)
    if args.seq_len < reach + 2 * top + 16:
        parser.error(
            f"--seq-len {args.seq_len} is not allowed: at least L·(W+C) + 2·pairs + 16 = {reach + 2 * top + 16}, "
            "so that far distances (>= L·(W+C)) exist."
        )
    if top > max_recall_pairs(args.vocab_size):
        parser.error(
            f"--max-pairs/--eval-pairs {top} is not allowed: at most {max_recall_pairs(args.vocab_size)}."
        )


def run(spec: RunSpec, args: argparse.Namespace, index: int = 1, count: int = 1) -> dict:
    """Train and score one run (in this process or a worker); returns its result: curve, timing, rows."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    buckets = distance_buckets(args.window, args.chunk_size, args.layers, args.seq_len)
    grid = eval_set(
        args.tasks, args.vocab_size, args.seq_len, args.eval_pairs, args.eval_samples, buckets, EVAL_SEED
    )
    print(f"[{index}/{count}] {spec.label}, seed {spec.seed}", flush=True)
    model = train_run(spec, args, list(buckets.values()), device)
    run_rows, run_curve, why_not = evaluate_model(
        model, grid, buckets, args.vocab_size, args.bin_width, 64, device, closed=not spec.writes_closed
    )
    tag = {"method": spec.key, "label": spec.label, "seed": spec.seed}
    spec.result.update({"rows": [{**tag, **r} for r in run_rows], "curve": [{**tag, **r} for r in run_curve]})
    if why_not:
        spec.result["writes_closed_note"] = why_not
    if args.save_models:
        model.save_pretrained(Path(args.out) / "models" / f"{spec.key}-s{spec.seed}")
    far = [r for r in run_rows if r["bucket"] == "far" and r["variant"] == "open"]
    far_text = ", ".join("{}/{}: {:.0%}".format(r["task"], r["num_pairs"], r["accuracy"]) for r in far)
    print(
        f"  {spec.key} seed {spec.seed} trained in {spec.result['train_seconds']:.0f} s; reached "
        f"{spec.result['final_pairs']} pairs; far accuracy (task/pairs) {far_text}",
        flush=True,
    )
    return spec.result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # here too, so that the payload's device line says what a run had
    device = resolve_device(args.device)
    buckets = distance_buckets(args.window, args.chunk_size, args.layers, args.seq_len)
    specs = method_specs(args)
    print(
        f"{len(specs)} runs of {args.steps} steps on {device}, {args.jobs} at a time; buckets {buckets}",
        flush=True,
    )
    started = time.perf_counter()
    if args.jobs == 1:
        results = [run(spec, args, i, len(specs)) for i, spec in enumerate(specs, 1)]
    else:  # one process per run, the slowest (full attention) first so that no run is left alone at the end
        order = sorted(range(len(specs)), key=lambda i: specs[i].key != "full")
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as workers:
            futures = {i: workers.submit(run, specs[i], args, n, len(specs)) for n, i in enumerate(order, 1)}
            results = [futures[i].result() for i in range(len(specs))]
    rows, curve = [], []
    for spec, result in zip(specs, results):
        spec.result = result
        rows += result["rows"]
        curve += result["curve"]
    pooled = pool(rows, ("method", "label", "variant", "task", "num_pairs", "bucket"))
    pooled_curve = pool(curve, ("method", "label", "variant", "task", "num_pairs", "lo"))
    reached = {}
    for spec in specs:
        reached.setdefault(spec.key, []).append(str(spec.result["final_pairs"]))
    for row in pooled:
        row["reached"] = "/".join(reached[row["method"]])
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "save_models")}
    settings.update(
        {
            "stacked_reach": stacked_reach(args.window, args.chunk_size, args.layers),
            "buckets": buckets,
            "eval_seed": EVAL_SEED,
            "device": str(device),
            "cpu_count": os.cpu_count(),
        }
    )
    payload = {**header("recall-study", argv, [], settings), "rows": pooled, "curve": pooled_curve}
    payload["methods"] = [
        {
            "key": s.key,
            "label": s.label,
            "seed": s.seed,
            "fields": s.fields,
            "writes_closed_in_training": s.writes_closed,
        }
        for s in specs
    ]
    payload["runs"] = [{"key": s.key, "label": s.label, "seed": s.seed, **s.result} for s in specs]
    payload["total_seconds"] = time.perf_counter() - started
    payload["outputs"] = write_outputs(args.out, payload, markdown(payload, pooled, buckets, specs))
    return payload


def markdown(payload: dict, pooled: list[dict], buckets: dict, specs: list[RunSpec]) -> str:
    s = payload["settings"]
    seeds = len(s["seeds"])
    intro = (
        f"Recall accuracy per answer by distance d to the recalled token, pooled over {seeds} seed(s); "
        f"{s['layers']} layers × {s['hidden_size']} hidden, M={s['memory_slots']}, W={s['window']}, "
        f"C={s['chunk_size']}, L·(W+C)={s['stacked_reach']}; {s['steps']} steps × {s['batch_size']} rows × "
        f"{s['seq_len']} tokens, answer-only loss, curriculum from {s.get('start_pairs', 1)} up to {s['max_pairs']} pairs, "
        f"{s.get('copy_rows', 0)} copy rows of {s.get('copy_len')} tokens a step (spans of {s.get('copy_span')} "
        "repeated inside the window); "
        f'{s["eval_samples"]} rows per task and pairs. "reached": the curriculum\'s last level, per seed. '
        "Chance, bag of values and bag of values with elimination need no binding of keys to values "
        "(eval/tasks/recall.py).\n\n"
    )
    table = bucket_table(pooled, buckets, extra=[("reached", "reached", "{}")])
    notes = {
        f"{r['label']}: writes not closed ({r['writes_closed_note']})"
        for r in payload["runs"]
        if r.get("writes_closed_note")
    }
    if any(spec.writes_closed for spec in specs):
        notes.add(f"{LABELS['sinks']}: trained and scored with its writes closed (the open columns).")
    seconds: dict[str, list[float]] = {}
    for spec in specs:
        seconds.setdefault(spec.label, []).append(spec.result["train_seconds"])
    per_run = ", ".join(f"{label} {sum(t) / len(t):.0f} s" for label, t in seconds.items())
    footer = (
        f"\n\nTraining time per run (mean over seeds): {per_run}. Whole study "
        f"{payload['total_seconds'] / 60:.1f} min on {payload['device']}, {s['jobs']} run(s) at a time."
    )
    return intro + table + "".join(f"\n\n{n}" for n in sorted(notes)) + footer
