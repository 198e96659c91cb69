"""Training speed and memory: BCT vs HF `LlamaForCausalLM` (sdpa) of the same shape.

    python -m eval bench-train [--seq-len 2048] [--batch-size 1] [--repeats 5] [--threads N]
                               [--out bench-results/bench_train.json]

Both models (4 layers x 256 hidden, 4 heads, vocab 32000 by default) train in the same process on the same
random tokens; one step is forward + backward + AdamW. Steps alternate BCT, Llama, BCT, ... after warmup,
and each model's time is the median of its repeats, so drift on a shared machine hits both alike.

Peak memory: on CUDA, `torch.cuda.max_memory_allocated` around one step, in this process. On CPU, where
torch keeps no allocator statistics, each model runs one step in a fresh subprocess, and the figure is that
process's peak resident set during the step minus its resident set just before it (activations, gradients
and optimizer state; the weights are already resident).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from eval.shapes import CAPACITY, SHAPE, random_bct, random_llama


def build(kind: str, seq_len: int, device: torch.device) -> torch.nn.Module:
    model = random_bct() if kind == "bct" else random_llama(seq_len)
    return model.to(device).train()


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor, bf16: bool
) -> None:
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_models(
    seq_len: int, batch_size: int, repeats: int, warmup: int, device: torch.device, bf16: bool
) -> dict:
    ids = torch.randint(0, SHAPE["vocab_size"], (batch_size, seq_len), device=device)
    runs = {}
    for kind in ("bct", "llama"):
        model = build(kind, seq_len, device)
        runs[kind] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    times: dict[str, list[float]] = {kind: [] for kind in runs}
    for i in range(warmup + repeats):
        for kind, (model, optimizer) in runs.items():
            sync(device)
            start = time.perf_counter()
            train_step(model, optimizer, ids, bf16)
            sync(device)
            if i >= warmup:
                times[kind].append(time.perf_counter() - start)
    return {kind: statistics.median(t) for kind, t in times.items()}


def cuda_peak(kind: str, seq_len: int, batch_size: int, device: torch.device, bf16: bool) -> int:
    model = build(kind, seq_len, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, SHAPE["vocab_size"], (batch_size, seq_len), device=device)
    train_step(model, optimizer, ids, bf16)  # optimizer state exists from here on
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    train_step(model, optimizer, ids, bf16)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def cpu_peak(kind: str, seq_len: int, batch_size: int) -> int:
    """Peak resident-set growth of one step, measured in a fresh subprocess (bytes)."""
    code = (
        "import torch; from eval.tools.bench_train import _cpu_peak_child; "
        f"torch.set_num_threads({torch.get_num_threads()}); print(_cpu_peak_child({kind!r}, {seq_len}, {batch_size}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def _cpu_peak_child(kind: str, seq_len: int, batch_size: int) -> int:
    model = build(kind, seq_len, torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, SHAPE["vocab_size"], (batch_size, seq_len))
    before = _rss_bytes()
    train_step(model, optimizer, ids, bf16=False)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m eval bench-train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--out", default="bench-results/bench_train.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    seconds = time_models(args.seq_len, args.batch_size, args.repeats, args.warmup, device, bf16)
    tokens = args.seq_len * args.batch_size
    peak = {
        kind: cuda_peak(kind, args.seq_len, args.batch_size, device, bf16)
        if device.type == "cuda"
        else cpu_peak(kind, args.seq_len, args.batch_size)
        for kind in ("bct", "llama")
    }
    result = {
        "command": "python -m eval bench-train " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": "bf16 autocast" if bf16 else "float32",
        "shape": SHAPE,
        "bct_capacity": CAPACITY,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "tokens_per_s": {kind: tokens / s for kind, s in seconds.items()},
        "peak_memory_bytes": peak,
        "peak_memory_kind": "cuda max_memory_allocated"
        if device.type == "cuda"
        else "peak RSS growth (subprocess)",
    }
    result["tokens_per_s_ratio"] = result["tokens_per_s"]["bct"] / result["tokens_per_s"]["llama"]
    result["peak_memory_ratio"] = peak["bct"] / peak["llama"]
    print(markdown(result))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return result


def markdown(r: dict) -> str:
    mib = 2**20
    cap = r["bct_capacity"]
    return "\n".join(
        [
            f"`{r['command'].strip()}` ({r['device']}, {r['dtype']}, seq {r['seq_len']} x batch {r['batch_size']}, "
            f"median of {r['repeats']} interleaved steps)",
            "",
            "| model | train tokens/s | peak memory (MiB) |",
            "|---|---|---|",
            f"| BCT (M={cap['memory_slots']}, W={cap['window']}, C={cap['chunk_size']}) | "
            f"{r['tokens_per_s']['bct']:,.0f} | {r['peak_memory_bytes']['bct'] / mib:,.1f} |",
            f"| Llama (sdpa) | {r['tokens_per_s']['llama']:,.0f} | {r['peak_memory_bytes']['llama'] / mib:,.1f} |",
            f"| BCT / Llama | {r['tokens_per_s_ratio']:.2f} | {r['peak_memory_ratio']:.2f} |",
        ]
    )
