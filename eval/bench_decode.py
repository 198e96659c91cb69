"""Decode speed and cache size against context length: BCT vs HF `LlamaForCausalLM` (default cache).

    python -m eval.bench_decode [--lengths 1024 4096 16384 32768] [--steps 32] [--out bench-results/bench_decode.json]

Both models have the same shape (4 layers x 256 hidden, 4 heads, vocab 32000) and random weights (speed
does not depend on what the weights learned). For each context length, each model prefills a random
prompt of that length (BCT segment by segment, Llama with SDPA), then decodes `--steps` tokens one at a
time; ms/token is the median step. Cache bytes are the real tensor bytes held after the prefill:
`BCTCache.nbytes()` for BCT, the keys and values of the `DynamicCache` for Llama. Lengths run from short
to long with both models interleaved at each length, so drift on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from modeling import BCTCache, BCTConfig, BCTForCausalLM

from .report import command_line, markdown_table, write_json

SHAPE = {
    "vocab_size": 32000,
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}
CAPACITY = {"memory_slots": 32, "window": 64, "chunk_size": 32}


def build_models(max_length: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    bct = BCTForCausalLM(BCTConfig(**SHAPE, **CAPACITY)).eval()
    llama_config = LlamaConfig(**SHAPE, max_position_embeddings=max_length + 1024)
    llama_config._attn_implementation = "sdpa"
    return {"bct": bct, "llama": LlamaForCausalLM(llama_config).eval()}


def cache_bytes(cache) -> int:
    if isinstance(cache, BCTCache):
        return cache.nbytes()
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


@torch.no_grad()
def measure(model, context: int, steps: int, seed: int = 0) -> dict[str, float]:
    """Prefill `context` random tokens, then decode `steps` tokens greedily; return timings and bytes."""
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, SHAPE["vocab_size"], (1, context), generator=generator)
    cache = BCTCache(model.config) if isinstance(model, BCTForCausalLM) else DynamicCache(config=model.config)
    start = time.perf_counter()
    out = model(prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
    prefill_s = time.perf_counter() - start
    held = cache_bytes(cache)
    token = out.logits[:, -1:].argmax(-1)
    step_ms = []
    for _ in range(steps):
        start = time.perf_counter()
        out = model(token, past_key_values=cache, use_cache=True)
        step_ms.append((time.perf_counter() - start) * 1000)
        token = out.logits[:, -1:].argmax(-1)
    return {
        "prefill_s": prefill_s,
        "ms_per_token": statistics.median(step_ms),
        "cache_bytes": held,
        "cache_bytes_after_decode": cache_bytes(cache),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--out", default="bench-results/bench_decode.json")
    args = parser.parse_args(argv)

    models = build_models(max(args.lengths))
    rows = []
    for context in args.lengths:
        results = {name: measure(model, context, args.steps) for name, model in models.items()}
        bct, llama = results["bct"], results["llama"]
        rows.append(
            {
                "context": context,
                "bct_ms_per_token": bct["ms_per_token"],
                "llama_ms_per_token": llama["ms_per_token"],
                "speedup": llama["ms_per_token"] / bct["ms_per_token"],
                "bct_cache_MiB": bct["cache_bytes"] / 2**20,
                "llama_cache_MiB": llama["cache_bytes"] / 2**20,
                "bct_prefill_s": bct["prefill_s"],
                "llama_prefill_s": llama["prefill_s"],
                "bct_cache_bytes": bct["cache_bytes"],
                "bct_cache_bytes_after_decode": bct["cache_bytes_after_decode"],
            }
        )
        print(f"context {context}: {rows[-1]}", flush=True)
    first = rows[0]["bct_ms_per_token"]
    for row in rows:
        row["bct_vs_own_first"] = row["bct_ms_per_token"] / first
    columns = [
        ("context", "context", "{:,}"),
        ("bct_ms_per_token", "BCT ms/token", "{:.2f}"),
        ("llama_ms_per_token", "Llama ms/token", "{:.2f}"),
        ("speedup", "Llama/BCT", "{:.1f}×"),
        ("bct_vs_own_first", f"BCT vs own {args.lengths[0]:,}", "{:.2f}×"),
        ("bct_cache_MiB", "BCT cache MiB", "{:.3f}"),
        ("llama_cache_MiB", "Llama cache MiB", "{:.1f}"),
        ("bct_prefill_s", "BCT prefill s", "{:.2f}"),
        ("llama_prefill_s", "Llama prefill s", "{:.2f}"),
    ]
    table = markdown_table(rows, columns)
    command = command_line("eval.bench_decode", argv)
    print(f"\n`{command}`\n\n{table}")
    payload = {"command": command, "shape": SHAPE, "capacity": CAPACITY, "steps": args.steps, "rows": rows}
    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
