"""Command-line plumbing shared by the tasks: model/method options, the run header, the output files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from eval.contenders.baselines.window_scores import POOLINGS, REFERENCE, Scoring
from eval.contenders.methods import BASELINES, CompressorOptions, Method, build_methods, load_model
from eval.report import SCHEMA_VERSION, command_line, device_name, write_json, write_markdown

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_model_args(parser: argparse.ArgumentParser, baselines: tuple[str, ...]) -> None:
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="DIR_OR_HUB_ID",
        help="a BCT export or a plain HF causal LM; repeat to compare several in one run",
    )
    parser.add_argument(
        "--baselines",
        nargs="+",
        default=list(baselines),
        choices=BASELINES,
        help=f"how plain HF models are run (default: {' '.join(baselines)})",
    )
    add_budget_args(parser)
    parser.add_argument(
        "--writes-closed",
        action="store_true",
        help="also run each BCT model with every memory write gate shut (same weights)",
    )
    parser.add_argument("--segment", type=int, default=1024, help="tokens per forward when streaming")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-results", help="folder for <task>.json/.md/.png")


def add_timing_model_args(parser: argparse.ArgumentParser, baselines: tuple[str, ...]) -> None:
    """The speed benchmarks' models (random ones of the benchmark shape unless given), the `baselines` they
    may be run as, and the KV budget."""
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="BCT export / HF causal LM (default: random models of the benchmark shape)",
    )
    parser.add_argument("--baselines", nargs="+", default=list(baselines), choices=baselines)
    add_budget_args(parser)


def add_budget_args(parser: argparse.ArgumentParser) -> None:
    """`--kv-bytes` and the prompt compressors' settings (defaults: the reference's, `REFERENCE`)."""
    parser.add_argument(
        "--kv-bytes",
        type=int,
        default=None,
        help="KV bytes every bounded baseline holds (2·L·heads·d·entries·dtype_bytes; default: the BCT "
        "model's cache bytes)",
    )
    group = parser.add_argument_group(f"SnapKV and FastKV (defaults from {REFERENCE})")
    group.add_argument("--window", type=int, default=8, help="observation window (always kept)")
    group.add_argument("--kernel", type=int, default=7, help="pooling kernel (odd)")
    group.add_argument(
        "--pooling", default="max", choices=POOLINGS, help="pooling of each query head's scores"
    )
    group.add_argument(
        "--fastkv-tsp-layer", type=int, default=None, help="FastKV's TSP layer (default L // 2 - 1)"
    )
    group.add_argument(
        "--fastkv-tsp-len", type=int, default=2048, help="tokens FastKV propagates past the TSP layer"
    )
    group.add_argument(
        "--fastkv-tsp-rate",
        type=float,
        default=None,
        help="share of the prompt FastKV propagates instead (the reference's proportional mode)",
    )
    group.add_argument(
        "--snapkv-per-query-head",
        action="store_true",
        help="SnapKV stores and selects per query head (the reference's SnapKV), not per KV head",
    )


def compressor_options(args: argparse.Namespace) -> CompressorOptions:
    return CompressorOptions(
        scoring=Scoring(window=args.window, kernel=args.kernel, pooling=args.pooling),
        tsp_layer=args.fastkv_tsp_layer,
        tsp_len=args.fastkv_tsp_len,
        tsp_rate=args.fastkv_tsp_rate,
        per_query_head=args.snapkv_per_query_head,
    )


def methods_from_args(args: argparse.Namespace) -> tuple[list[Method], dict[str, Any]]:
    """Load every --model and build the run's methods; also return the first tokenizer found (or None)."""
    loaded = [load_model(source, DTYPES[args.dtype]) for source in args.model]
    options = compressor_options(args)
    methods = build_methods(loaded, args.baselines, args.writes_closed, args.kv_bytes, args.segment, options)
    tokenizer = next((m.tokenizer for m in loaded if m.tokenizer is not None), None)
    return methods, {"tokenizer": tokenizer, "loaded": loaded}


def header(
    task: str, argv: list[str] | None, methods: list[Method], settings: dict[str, Any]
) -> dict[str, Any]:
    """The part of every payload that says what ran: task, exact command, schema, device, methods, settings."""
    return {
        "task": task,
        "command": command_line(f"eval {task}", argv),
        "schema": SCHEMA_VERSION,
        "device": device_name(),
        "reference": REFERENCE,  # the SnapKV/FastKV code whose semantics and defaults the baselines follow
        "methods": [m.describe() for m in methods],
        "settings": settings,
    }


def write_outputs(out: str | Path, payload: dict[str, Any], markdown: str) -> dict[str, str]:
    """Write `<task>.json`, `<task>.md` and `<task>.png` into `out`; return their paths."""
    from eval.plots import plot_payload  # matplotlib only when writing

    out = Path(out)
    task = payload["task"]
    paths = {
        "json": str(write_json(out / f"{task}.json", payload)),
        "markdown": str(write_markdown(out / f"{task}.md", payload["command"], markdown)),
        "plot": str(plot_payload(payload, out / f"{task}.png")),
    }
    print(f"\n`{payload['command']}`\n\n{markdown}\n\nwrote {', '.join(paths.values())}", flush=True)
    return paths
