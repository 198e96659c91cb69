"""Time to first token: SnapKV and FastKV against the full model and against BCT prefill, at equal KV bytes.

    python -m eval ttft [--model DIR ...] [--lengths 4096 16384 32768] [--rounds 3]

Per context length every method turns the same random prompt into the logits of its next token, in one call,
into a fresh cache: the full model (HF `DynamicCache`), SnapKV and FastKV (`eval/contenders/baselines/`, at
the BCT's cache bytes unless `--kv-bytes`), and the BCT (its own chunked prefill). The methods are timed in
interleaved rounds (forward then reverse order; each method's fastest round counts). The rows also give the
most KV bytes held during the prefill and the bytes held after it. `fastkv_over_snapkv` is FastKV's time over
SnapKV's at the same budget in the same run: below 1 when token-selective propagation saves more compute in
the later layers than it costs (TSP at layer `--fastkv-tsp-layer`, `--fastkv-tsp-len` tokens propagated).

Without `--model`, random-weight models of the benchmark shape are built (`eval/shapes.py`, GQA; time does
not depend on the weights). Payload rows: `{method, label, context, ttft_s, peak_prefill_bytes,
cache_bytes}`; `ratios` per context. Plot: time and peak bytes against context length.
"""

from __future__ import annotations

import argparse
import gc

import torch

from eval.common import add_timing_model_args, compressor_options, header, write_outputs
from eval.contenders.methods import LoadedModel, Method, build_methods, load_model
from eval.report import markdown_table, pivot
from eval.shapes import CAPACITY, SHAPE, random_bct, random_llama
from eval.tasks.speed import time_prefill

BASELINES = ("full", "snapkv", "fastkv")


@torch.no_grad()
def measure(methods: list[Method], context: int, rounds: int, seed: int) -> list[dict]:
    """One row per method: fastest of `rounds` interleaved one-call prefills of the same prompt."""
    vocab = min(m.model.config.vocab_size for m in methods)
    prompt = torch.randint(0, vocab, (1, context), generator=torch.Generator().manual_seed(seed + context))
    prompt = prompt.to(methods[0].model.device)
    best = {m.label: float("inf") for m in methods}
    peak, held = {}, {}
    for round_index in range(rounds):
        for method in methods if round_index % 2 == 0 else methods[::-1]:
            gc.collect()
            seconds, cache, peak[method.label] = time_prefill(method, prompt)
            best[method.label] = min(best[method.label], seconds)
            held[method.label] = method.cache_bytes(cache)
            del cache
    rows = []
    for method in methods:
        rows.append(
            {
                "method": method.key,
                "label": method.label,
                "context": context,
                "ttft_s": best[method.label],
                "peak_prefill_bytes": peak[method.label],
                "cache_bytes": held[method.label],
            }
        )
        print(f"  {method.label}: {best[method.label]:.3f} s", flush=True)
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """Per context: FastKV over SnapKV, and each method over the full model and over the BCT (< 1: faster)."""
    out = []
    for context in sorted({row["context"] for row in rows}):
        at = {row["method"]: row["ttft_s"] for row in rows if row["context"] == context}
        entry = {"context": context}
        if "fastkv" in at and "snapkv" in at:
            entry["fastkv_over_snapkv"] = at["fastkv"] / at["snapkv"]
        for key in ("snapkv", "fastkv", "bct"):
            for base in ("full", "bct"):
                if key != base and key in at and base in at:
                    entry[f"{key}_over_{base}"] = at[key] / at[base]
        out.append(entry)
    return out


def markdown(rows: list[dict], methods: list[Method], payload: dict) -> str:
    labels = [m.label for m in methods]
    parts = []
    for value, title, scale, fmt in (
        ("ttft_s", "Time to first token, seconds (fastest round)", 1.0, "{:.3f}"),
        ("peak_prefill_bytes", "Most KV cache MiB held during the prefill", 2.0**-20, "{:.3f}"),
        ("cache_bytes", "KV cache MiB held after the prefill", 2.0**-20, "{:.3f}"),
    ):
        scaled = [{**row, value: row[value] * scale} for row in rows]
        columns = [("context", "context", "{:,}")] + [(label, label, fmt) for label in labels]
        parts.append(f"{title}:\n\n{markdown_table(pivot(scaled, 'context', 'label', value), columns)}")
    keys = sorted({k for entry in payload["ratios"] for k in entry if k != "context"})
    columns = [("context", "context", "{:,}")] + [(k, k.replace("_", " "), "{:.2f}") for k in keys]
    parts.append(
        f"Ratios of times (< 1: the first is faster):\n\n{markdown_table(payload['ratios'], columns)}"
    )
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m eval ttft", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_timing_model_args(parser, BASELINES)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (fastest counts)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    if args.model:
        loaded = [load_model(source, dtype, with_tokenizer=False) for source in args.model]
    else:
        loaded = [
            LoadedModel("random BCT 4x256", random_bct().eval(), None),
            LoadedModel("random Llama 4x256", random_llama(max(args.lengths)).eval(), None),
        ]
    for entry in loaded:
        entry.model.to(device=args.device, dtype=dtype)
    methods = build_methods(loaded, args.baselines, False, args.kv_bytes, options=compressor_options(args))
    measure(methods, 256, 1, args.seed)  # warm-up, untimed: first calls pay one-off setup costs
    rows = []
    for context in sorted(args.lengths):
        print(f"context {context:,}", flush=True)
        rows += measure(methods, context, args.rounds, args.seed)
    settings = {
        "lengths": sorted(args.lengths),
        "rounds": args.rounds,
        "dtype": args.dtype,
        "shape": None if args.model else {**SHAPE, **CAPACITY},
    }
    payload = {**header("ttft", argv, methods, settings), "rows": rows, "ratios": ratios(rows)}
    payload["outputs"] = write_outputs(args.out, payload, markdown(rows, methods, payload))
    return payload
