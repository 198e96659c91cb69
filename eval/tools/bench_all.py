"""Every benchmark in one go, then the README's results section (what `make bench` runs).

    python -m eval bench-all [--bct BCT_EXPORT] [--baseline LLAMA] [--out bench-results] [--tasks ...]

Runs perplexity by position and the passkey grid (and MQAR, with `--tasks ... mqar`) on a trained BCT (also
with its writes closed) and on a same-shape full-attention Llama run as every baseline (full attention,
sliding window, sinks, SnapKV, FastKV) at the BCT's KV cache bytes; then speed/memory and time to first token
on random-weight models of the benchmark shape; then rewrites the part of `--readme` between
`<!-- results:begin -->` and `<!-- results:end -->` from the tasks' Markdown tables and PNGs.

The default models are the recall bench pair of docs/design.md §8.11 (`make far-pair`): the retain BCT
trained for far passkeys with text beside them (`runs/bench-recall/far-bench_pair_far_text/export-best`) and
its full-attention twin (`runs/bench-recall/llama`); with them missing, it first trains them
(`python -m eval train-pair --out runs/bench-recall --far-pair`). MQAR is not in the default tasks: no model
of that pair was trained for it, and the earlier pair scored 0% on it with every method, the twin included.
`--quick` shrinks every task to a smoke-test size.
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from eval.corpus import add_heldout_args
from eval.readme import write_results_section
from eval.tasks import mqar, passkey, perplexity, speed, ttft
from eval.tools import train_pair

DEFAULT_PAIR = "runs/bench-recall"
DEFAULT_BCT = f"{DEFAULT_PAIR}/{train_pair.FAR_PAIR_BCT}"
DEFAULT_BASELINE = f"{DEFAULT_PAIR}/llama"
TASK_ORDER = ("perplexity", "passkey", "mqar", "speed", "ttft")
DEFAULT_TASKS = ("perplexity", "passkey", "speed", "ttft")


def task_argvs(args: argparse.Namespace) -> dict[str, list[str]]:
    """The argument list of each task (each task records it as its exact command). Lengths follow the
    pair's training length T: perplexity over 16 T, passkey from T to 16 T, MQAR at T."""
    models = ["--model", args.bct, "--model", args.baseline, "--writes-closed", "--out", args.out]
    text = ["--source", args.source, "--validation-fraction", str(args.validation_fraction)]
    text += ["--cache-dir", args.cache_dir]
    speed = ["--out", args.out] + (["--threads", str(args.speed_threads)] if args.speed_threads else [])
    if args.quick:
        return {
            "perplexity": [
                *models,
                *text,
                *shlex.split("--context 256 --windows 1 --buckets 4 --segment 64 --compress-every 16"),
            ],
            "passkey": [
                *models,
                *text,
                "--lengths",
                *map(str, args.quick_passkey_lengths),
                *shlex.split("--depths 0 1 --samples 1"),
            ],
            "mqar": [*models, *shlex.split("--pairs 2 4 --queries 2 --seq-len 96 --samples 2")],
            "speed": [*speed, *shlex.split("--lengths 256 512 --steps 2 --train-seq-len 0")],
            "ttft": [*speed, *shlex.split("--lengths 256 512 --rounds 1 --fastkv-tsp-len 128")],
        }
    length = args.train_length
    return {
        "perplexity": [*models, *text, "--context", str(16 * length), "--windows", str(args.windows)],
        "passkey": [*models, *text, "--lengths", *(str(length * 2**i) for i in range(5))],
        "mqar": [*models, "--seq-len", str(length)],
        "speed": [*speed, "--lengths", *map(str, args.speed_lengths)],
        "ttft": [*speed, "--lengths", *map(str, args.ttft_lengths)],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m eval bench-all",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bct", default=None, help=f"BCT export (default {DEFAULT_BCT}, trained if missing)")
    parser.add_argument("--baseline", default=None, help=f"same-shape HF Llama (default {DEFAULT_BASELINE})")
    parser.add_argument("--out", default="bench-results")
    parser.add_argument(
        "--readme",
        default="bench-results/README.md",
        help="file whose results section is rewritten ('' = none)",
    )
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), choices=TASK_ORDER)
    parser.add_argument(
        "--train-length",
        type=int,
        default=1024,
        help="the BCT's training sequence length (the default pair's far stages: 1,024)",
    )
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument(
        "--speed-lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768, 65536]
    )
    parser.add_argument(
        "--ttft-lengths", type=int, nargs="+", default=[4096, 16384, 32768], help="contexts of the ttft task"
    )
    parser.add_argument(
        "--speed-threads", type=int, default=None, help="torch threads for the speed and ttft tasks"
    )
    add_heldout_args(parser)
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes for every task")
    parser.add_argument(
        "--quick-passkey-lengths", type=int, nargs="+", default=[160, 320], help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    if args.bct is None or args.baseline is None:
        if not (os.path.isdir(DEFAULT_BCT) and os.path.isdir(DEFAULT_BASELINE)):
            train_argv = ["--out", DEFAULT_PAIR, "--far-pair"]
            print(
                f"bench models missing: training them (python -m eval train-pair {' '.join(train_argv)})",
                flush=True,
            )
            train_pair.main(train_argv)
        args.bct, args.baseline = args.bct or DEFAULT_BCT, args.baseline or DEFAULT_BASELINE

    modules = {"perplexity": perplexity, "passkey": passkey, "mqar": mqar, "speed": speed, "ttft": ttft}
    argvs = task_argvs(args)
    payloads = {task: modules[task].main(argvs[task]) for task in TASK_ORDER if task in args.tasks}
    if args.readme:  # every task with results in --out, also those of an earlier run
        done = [task for task in TASK_ORDER if (Path(args.out) / f"{task}.json").is_file()]
        write_results_section(
            Path(args.readme), Path(args.out), done, {"bct": args.bct, "baseline": args.baseline}
        )
    return payloads
