"""Speed and memory against context length, every method in one run: prefill time, decode ms/token, cache bytes;
plus training tokens/s (BCT vs Llama, `eval.tools.bench_train`).

    python -m eval speed [--model DIR ...] [--lengths 1024 2048 ... 65536] [--steps 16]

Without `--model`, random-weight models of the benchmark shape are built (`eval/shapes.py`: 4 layers × 256
hidden, 4 query heads on 2 KV heads, vocab 32 000; speed does not depend on what weights learned): a BCT with
32 slots + 64 window + 32 chunk and a same-shape Llama, which runs as every baseline at the BCT's cache bytes
(`--kv-bytes`; 128 entries per layer and KV head).

Per context length, each method prefills the same random prompt into a fresh cache the way it streams
(timed in rounds over all methods, forward then reverse order, 3 rounds up to 4 K tokens and 2 above; each
method's fastest round counts, the least disturbed by other load on a shared machine):
BCT, full attention, SnapKV and FastKV in one call (BCT segments internally), sliding window in `--sliding-segment`
token segments through HF's sliding cache, sinks in 512-token blocks. The sliding window is also timed in
one call, as HF users run it (its mask is N × N), up to `--one-call-max`. Then every method decodes
`--steps` tokens, the methods interleaved step by step so that load on a shared machine hits all alike;
ms/token is the median step. Cache bytes are the real tensor bytes held after the prefill, after decoding
(SnapKV and FastKV grow by one entry per decoded token, as in their reference), and at the peak of the
prefill (FastKV and SnapKV hold a whole layer's prompt before compressing it).
A method whose next prefill would likely pass `--time-limit` seconds (growth estimated from the last two
lengths) is not run at longer contexts.

Payload: `rows` `{method, label, context, prefill_s, prefill_mode, one_call_prefill_s, ms_per_token,
cache_bytes, cache_bytes_after_decode, peak_prefill_bytes, kv_entries}`, `train` (tokens/s), `checks` (the ratios at
`--check-length`). Plot: ms/token, cache MiB and prefill seconds against context length.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch

from eval.common import add_timing_model_args, compressor_options, header, write_outputs
from eval.contenders.kv_bytes import PeakBytes
from eval.contenders.methods import BASELINES, LoadedModel, Method, build_methods, load_model
from eval.report import markdown_table, pivot
from eval.shapes import CAPACITY, SHAPE, random_bct, random_llama
from modeling.cache import CACHE_ARG


def random_models(max_length: int) -> list[LoadedModel]:
    """A random BCT and a same-shape random Llama (`eval.shapes`)."""
    return [
        LoadedModel("random BCT 4x256", random_bct().eval(), None),
        LoadedModel("random Llama 4x256", random_llama(max_length).eval(), None),
    ]


@torch.no_grad()
def time_prefill(
    method: Method, prompt: torch.Tensor, segment: int | None = None
) -> tuple[float, object, int]:
    """Seconds to prefill `prompt` into a fresh cache (the method's own way, or in `segment`-token pieces),
    the cache, and the most KV bytes it held during the prefill."""
    cache = method.new_cache()
    with PeakBytes(cache) as peak:
        start = time.perf_counter()
        if segment is None:
            method.prefill(prompt, cache)
        else:
            for _ in method.stream(prompt, cache, logits_to_keep=1, segment=segment):
                pass
        if prompt.is_cuda:  # kernels run asynchronously: wait for the last one
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, cache, peak.bytes


@torch.no_grad()
def warm_up(methods: list[Method], vocab: int) -> None:
    """One short prefill and two decode steps per method, untimed: first calls pay one-off setup costs."""
    prompt = torch.randint(0, vocab, (1, 160), generator=torch.Generator().manual_seed(1))
    for method in methods:
        _, cache, _ = time_prefill(method, prompt)
        for _ in range(2):
            method.model(prompt[:, -1:], **{CACHE_ARG: cache}, use_cache=True)


def prefill_rounds(context: int) -> int:
    """Rounds of prefill timing: 3 up to 4 K tokens, else 2 (each method's fastest round counts)."""
    return 3 if context <= 4096 else 2


@torch.no_grad()
def measure_length(
    methods: list[Method], context: int, steps: int, one_call_max: int, skip: set[str], seed: int
) -> list[dict]:
    """Prefill (interleaved rounds, forward then reverse order, fastest round kept), then decode `steps`
    tokens with the methods interleaved step by step. One row per method."""
    vocab = min(m.model.config.vocab_size for m in methods)
    prompt = torch.randint(0, vocab, (1, context), generator=torch.Generator().manual_seed(seed + context))
    active = [m for m in methods if m.label not in skip]
    best = {m.label: float("inf") for m in active}
    one_call = {m.label: float("inf") for m in active if m.key == "sliding" and context <= one_call_max}
    caches, held, peak = {}, {}, {}
    for round_index in range(prefill_rounds(context)):
        for method in active if round_index % 2 == 0 else active[::-1]:
            caches.pop(method.label, None)  # free the previous round's cache first
            gc.collect()
            seconds, caches[method.label], peak[method.label] = time_prefill(method, prompt)
            best[method.label] = min(best[method.label], seconds)
            held[method.label] = method.cache_bytes(caches[method.label])
            if method.label in one_call:
                seconds, _, _ = time_prefill(method, prompt, segment=context)
                one_call[method.label] = min(one_call[method.label], seconds)
    token = prompt[:, -1:]
    step_ms: dict[str, list[float]] = {m.label: [] for m in active}
    for _ in range(steps + 2):  # two warm-up steps
        for method in active:
            start = time.perf_counter()
            method.model(token, **{CACHE_ARG: caches[method.label]}, use_cache=True)
            step_ms[method.label].append((time.perf_counter() - start) * 1000)
    rows = []
    for method in methods:
        row = {"method": method.key, "label": method.label, "context": context}
        if method.label in skip:
            rows.append({**row, "skipped": True})
            continue
        cache = caches[method.label]
        mode = "one call" if method.prefill_segment is None else f"{method.prefill_segment}-token segments"
        rows.append(
            {
                **row,
                "prefill_s": best[method.label],
                "prefill_mode": mode,
                "one_call_prefill_s": one_call.get(method.label),
                "ms_per_token": statistics.median(step_ms[method.label][2:]),
                "cache_bytes": held[method.label],
                "cache_bytes_after_decode": method.cache_bytes(cache),
                "peak_prefill_bytes": peak[method.label],
                "kv_entries": method.cache_entries(cache),
            }
        )
        for name, bytes_key in (
            ("cache_MiB", "cache_bytes"),
            ("cache_MiB_after_decode", "cache_bytes_after_decode"),
            ("peak_prefill_MiB", "peak_prefill_bytes"),
        ):
            rows[-1][name] = rows[-1][bytes_key] / 2**20
        print(
            f"  {method.label}: prefill {best[method.label]:.2f}s, {rows[-1]['ms_per_token']:.2f} ms/token",
            flush=True,
        )
    return rows


def training_throughput(seq_len: int, repeats: int) -> dict:
    """Training tokens/s of a BCT and a same-shape Llama, interleaved (`eval.tools.bench_train.time_models`)."""
    from eval.tools.bench_train import time_models

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seconds = time_models(seq_len, 1, repeats, 1, device, bf16=False)
    tokens_per_s = {kind: seq_len / s for kind, s in seconds.items()}
    return {
        "seq_len": seq_len,
        "batch_size": 1,
        "repeats": repeats,
        "tokens_per_s": tokens_per_s,
        "bct_over_llama": tokens_per_s["bct"] / tokens_per_s["llama"],
    }


def checks(rows: list[dict], context: int) -> dict:
    """The targets at `context`: every method's decode and prefill time over the BCT's (> 1: BCT is faster),
    and FastKV's prefill over SnapKV's (< 1: token-selective propagation saves time)."""
    at = {row["method"]: row for row in rows if row["context"] == context and not row.get("skipped")}
    bct = at.get("bct")
    if bct is None:
        return {}
    out = {"context": context}
    if "fastkv" in at and "snapkv" in at:  # what token-selective propagation saves at the same budget
        out["prefill_fastkv_over_snapkv"] = at["fastkv"]["prefill_s"] / at["snapkv"]["prefill_s"]
    for key in ("full", "sliding", "sinks", "snapkv", "fastkv"):
        if key in at:
            out[f"decode_{key}_over_bct"] = at[key]["ms_per_token"] / bct["ms_per_token"]
            out[f"prefill_{key}_over_bct"] = at[key]["prefill_s"] / bct["prefill_s"]
            if at[key].get("one_call_prefill_s"):
                out[f"prefill_{key}_one_call_over_bct"] = at[key]["one_call_prefill_s"] / bct["prefill_s"]
    return out


def markdown(rows: list[dict], methods: list[Method], payload: dict) -> str:
    done = [row for row in rows if not row.get("skipped")]
    labels = [m.label for m in methods]
    parts = []
    for value, title, fmt in (
        ("ms_per_token", "Decode ms/token (median step)", "{:.2f}"),
        ("cache_MiB", "KV cache MiB held after the prefill (real tensor bytes)", "{:.3f}"),
        ("cache_MiB_after_decode", "KV cache MiB held after decoding", "{:.3f}"),
        ("peak_prefill_MiB", "Most KV cache MiB held during the prefill", "{:.3f}"),
        ("prefill_s", "Prefill seconds (see prefill modes below)", "{:.2f}"),
    ):
        table = pivot(done, "context", "label", value)
        columns = [("context", "context", "{:,}")] + [(label, label, fmt) for label in labels]
        parts.append(f"{title}:\n\n{markdown_table(table, columns)}")
    one_call = [row for row in done if row.get("one_call_prefill_s") is not None]
    if one_call:
        table = [{"context": row["context"], "seconds": row["one_call_prefill_s"]} for row in one_call]
        parts.append(
            "Sliding window prefilled in one call (HF's N × N mask):\n\n"
            + markdown_table(table, [("context", "context", "{:,}"), ("seconds", "seconds", "{:.2f}")])
        )
    modes = sorted({f"{row['label']}: {row['prefill_mode']}" for row in done})
    parts.append("Prefill modes: " + "; ".join(modes) + ".")
    if payload.get("train"):
        train = payload["train"]
        table = [{"model": kind, "tokens_per_s": value} for kind, value in train["tokens_per_s"].items()]
        parts.append(
            f"Training tokens/s (seq {train['seq_len']}, batch 1, forward + backward + AdamW, "
            f"`python -m eval bench-train`):\n\n"
            + markdown_table(table, [("model", "model", "{}"), ("tokens_per_s", "tokens/s", "{:,.0f}")])
        )
    if payload.get("checks"):
        ratios = ", ".join(f"{k} = {v:.2f}" for k, v in payload["checks"].items() if k != "context")
        parts.append(
            f"Ratios at {payload['checks']['context']:,} tokens (`*_over_bct` > 1: BCT faster; `prefill_fastkv_over_snapkv` < 1: FastKV faster): {ratios}."
        )
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m eval speed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_timing_model_args(parser, BASELINES)
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768, 65536]
    )
    parser.add_argument("--steps", type=int, default=16, help="decode steps timed per method and length")
    parser.add_argument("--sliding-segment", type=int, default=4096)
    parser.add_argument(
        "--one-call-max", type=int, default=32768, help="longest one-call sliding-window prefill"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=400.0,
        help="seconds: a method whose next prefill would likely take longer stops there",
    )
    parser.add_argument("--check-length", type=int, default=32768)
    parser.add_argument("--train-seq-len", type=int, default=2048, help="0 skips the training throughput")
    parser.add_argument("--train-repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's); 1 gives steadier timings on a loaded machine",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = [load_model(source, with_tokenizer=False) for source in args.model] if args.model else None
    loaded = loaded or random_models(max(args.lengths))
    methods = build_methods(loaded, args.baselines, False, args.kv_bytes, options=compressor_options(args))
    for method in methods:
        if method.key == "sliding":
            method.prefill_segment = args.sliding_segment
    warm_up(methods, min(m.model.config.vocab_size for m in methods))
    rows, skip, previous = [], set(), {}
    for context in sorted(args.lengths):
        print(f"context {context:,}", flush=True)
        rows += measure_length(methods, context, args.steps, args.one_call_max, skip, args.seed)
        for row in rows[-len(methods) :]:
            if row.get("skipped"):
                continue
            # Expected growth per doubling, from the last two lengths: 2x (linear) to 4x (quadratic).
            growth = min(max(row["prefill_s"] / previous.get(row["label"], row["prefill_s"] / 4), 2.0), 4.0)
            if row["prefill_s"] * growth > args.time_limit:
                skip.add(row["label"])
            previous[row["label"]] = row["prefill_s"]
    settings = {
        "lengths": sorted(args.lengths),
        "steps": args.steps,
        "sliding_segment": args.sliding_segment,
        "one_call_max": args.one_call_max,
        "time_limit": args.time_limit,
        "shape": None if args.model else {**SHAPE, **CAPACITY},
    }
    payload = {**header("speed", argv, methods, settings), "rows": rows}
    payload["train"] = (
        training_throughput(args.train_seq_len, args.train_repeats) if args.train_seq_len else None
    )
    payload["checks"] = checks(rows, args.check_length)
    payload["outputs"] = write_outputs(args.out, payload, markdown(rows, methods, payload))
    return payload
