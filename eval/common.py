"""Command-line plumbing shared by the tasks: model/method options, the run header, the output files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from eval.methods import BASELINES, Method, build_methods, load_model
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
    parser.add_argument(
        "--kv-budget",
        type=int,
        default=None,
        help="KV entries per layer and KV head for the bounded baselines (default: the BCT model's "
        "kv_capacity)",
    )
    parser.add_argument(
        "--writes-closed",
        action="store_true",
        help="also run each BCT model with every memory write gate shut (same weights)",
    )
    parser.add_argument("--segment", type=int, default=1024, help="tokens per forward when streaming")
    parser.add_argument(
        "--fastkv-tsp-layer", type=int, default=None, help="FastKV's TSP layer (default L/2 - 1)"
    )
    parser.add_argument(
        "--fastkv-tsp-rate", type=float, default=0.2, help="share of the prompt FastKV propagates"
    )
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-results", help="folder for <task>.json/.md/.png")


def methods_from_args(args: argparse.Namespace) -> tuple[list[Method], dict[str, Any]]:
    """Load every --model and build the run's methods; also return the first tokenizer found (or None)."""
    loaded = [load_model(source, DTYPES[args.dtype]) for source in args.model]
    fastkv = {"tsp_rate": args.fastkv_tsp_rate}
    if args.fastkv_tsp_layer is not None:
        fastkv["tsp_layer"] = args.fastkv_tsp_layer
    methods = build_methods(loaded, args.baselines, args.writes_closed, args.kv_budget, args.segment, fastkv)
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
