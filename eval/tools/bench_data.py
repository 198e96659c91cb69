"""Data pipeline throughput on the default corpus: tokenization, packing and the training loaders.

    python -m eval bench-data [--batch-size 8] [--seq-len 512] [--out bench-data.json]

Prints a Markdown table headed by the command that produced it and writes the numbers as JSON (`--out`).
Every rate is measured in this run with `time.perf_counter`, so ratios between rows (batch API vs
`datasets.map`, loader vs training) compare like with like. `loader_tokens_per_second(loader)` is the
number to hold against a model's training tokens/s: build the loader exactly as the trainer does
(`build_train_loader`) and call it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from itertools import islice
from typing import Any

import datasets
import tokenizers
import torch

from data import (
    DataConfig,
    PackedLoader,
    StreamingLoader,
    SyntheticMixer,
    build_tokenizer,
    encode_batch,
    open_source,
    pack_rows,
    tokenize_documents,
)


def loader_tokens_per_second(loader: Any, num_batches: int = 500, warmup: int = 5) -> float:
    """Tokens per second that `loader` delivers (`input_ids` elements), over `num_batches` after `warmup`."""
    batches = iter(loader)
    for _ in islice(batches, warmup):
        pass
    tokens = 0
    start = time.perf_counter()
    for batch in islice(batches, num_batches):
        tokens += batch["input_ids"].numel()
    return tokens / (time.perf_counter() - start)


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    cfg = DataConfig(
        seq_len=args.seq_len, vocab_size=args.vocab_size, cache_dir=args.cache_dir, max_chars=args.max_chars
    )
    cfg.validate()
    result: dict[str, Any] = {
        "command": "python -m eval bench-data " + shlex.join(argv),
        "cpu_count": os.cpu_count(),
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "unset"),
        "versions": {
            "torch": torch.__version__,
            "tokenizers": tokenizers.__version__,
            "datasets": datasets.__version__,
        },
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
    }

    start = time.perf_counter()
    tokenizer = build_tokenizer(cfg)
    result["tokenizer_seconds"] = time.perf_counter() - start  # BPE training, or loading it from the cache
    result["vocab_size"] = len(tokenizer)

    start = time.perf_counter()
    texts = [document.text for document in open_source(cfg).documents()]
    result["read_seconds"] = time.perf_counter() - start
    megabytes = sum(len(text.encode()) for text in texts) / 1e6
    result.update(source=cfg.source, documents=len(texts), megabytes=megabytes)

    start = time.perf_counter()
    token_arrays = tokenize_documents(tokenizer, texts)
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) for ids in token_arrays)
    result["tokenize_batch_api"] = {
        "seconds": seconds,
        "mb_per_s": megabytes / seconds,
        "tokens_per_s": tokens / seconds,
    }
    result["tokens"] = tokens

    if args.map_num_proc > 0:
        start = time.perf_counter()
        table = datasets.Dataset.from_dict({"text": texts}).map(
            lambda batch: {"input_ids": encode_batch(tokenizer, batch["text"])},
            batched=True,
            batch_size=64,
            num_proc=args.map_num_proc,
            remove_columns=["text"],
        )
        seconds = time.perf_counter() - start
        assert sum(len(ids) for ids in table["input_ids"]) == tokens
        result["tokenize_datasets_map"] = {
            "num_proc": args.map_num_proc,
            "seconds": seconds,
            "mb_per_s": megabytes / seconds,
            "tokens_per_s": tokens / seconds,
        }

    start = time.perf_counter()
    rows, _ = pack_rows(token_arrays, tokenizer.eos_token_id, args.seq_len)
    seconds = time.perf_counter() - start
    result["pack"] = {"seconds": seconds, "tokens_per_s": tokens / seconds, "rows": len(rows)}

    rows = torch.from_numpy(rows)
    sharding = {"batch_size": args.batch_size, "seed": 0, "rank": 0, "world_size": 1}
    loaders = {
        "loader": PackedLoader(rows, **sharding),
        "loader_synthetic": PackedLoader(
            rows, **sharding, mixer=SyntheticMixer(cfg.replace(synthetic_fraction=0.1), tokenizer, seed=0)
        ),
        "loader_streaming": StreamingLoader(cfg, open_source(cfg), tokenizer, **sharding),
    }
    counts = {
        "loader": args.loader_batches,
        "loader_synthetic": args.loader_batches // 4,
        "loader_streaming": 50,
    }
    for name, loader in loaders.items():
        # Median of three: other processes on a small machine make single timings noisy.
        rate = statistics.median(loader_tokens_per_second(loader, counts[name]) for _ in range(3))
        result[name] = {
            "batches": counts[name],
            "tokens_per_s": rate,
            "batches_per_s": rate / (args.batch_size * args.seq_len),
        }
    return result


def table(result: dict[str, Any]) -> str:
    def rate(entry: dict[str, Any]) -> str:
        parts = [f"{entry['mb_per_s']:.2f} MB/s"] if "mb_per_s" in entry else []
        if "batches_per_s" in entry:
            parts.append(f"{entry['batches_per_s']:,.0f} batches/s")
        return ", ".join([*parts, f"{entry['tokens_per_s'] / 1e6:,.2f} M tokens/s"])

    shape = f"B={result['batch_size']}, T={result['seq_len']}"
    rows = [
        (
            "tokenize: `tokenizers` batch API (used)",
            result["tokenize_batch_api"],
            f"{result['tokenize_batch_api']['seconds']:.1f} s",
        ),
    ]
    if "tokenize_datasets_map" in result:
        entry = result["tokenize_datasets_map"]
        rows.append(
            (f"tokenize: `datasets.map(num_proc={entry['num_proc']})`", entry, f"{entry['seconds']:.1f} s")
        )
    rows += [
        (f"pack into {result['seq_len']}-token rows", result["pack"], f"{result['pack']['rows']:,} rows"),
        (
            f"loader, packed corpus ({shape})",
            result["loader"],
            f"3 × {result['loader']['batches']} batches, median",
        ),
        (
            f"loader, 10 % synthetic ({shape})",
            result["loader_synthetic"],
            f"3 × {result['loader_synthetic']['batches']} batches, median",
        ),
        (
            f"loader, streaming, tokenizing on the fly ({shape})",
            result["loader_streaming"],
            f"3 × {result['loader_streaming']['batches']} batches, median",
        ),
    ]
    lines = [
        f"`{result['command']}`",
        "",
        f"Corpus `{result['source']}`: {result['documents']:,} documents, {result['megabytes']:.1f} MB, "
        f"{result['tokens'] / 1e6:.2f} M tokens with a {result['vocab_size']}-token BPE "
        f"({result['tokenizer_seconds']:.1f} s to train or load it). {result['cpu_count']} CPU cores, "
        f"TOKENIZERS_PARALLELISM={result['tokenizers_parallelism']}.",
        "",
        "| stage | throughput | measured over |",
        "|---|---|---|",
        *(f"| {stage} | {rate(entry)} | {detail} |" for stage, entry, detail in rows),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m eval bench-data", description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--max-chars", type=int, default=None, help="cap the corpus (quick runs)")
    parser.add_argument(
        "--map-num-proc", type=int, default=2, help="processes for the datasets.map row; 0 skips it"
    )
    parser.add_argument("--loader-batches", type=int, default=2000)
    parser.add_argument("--cache-dir", default=DataConfig().cache_dir)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    datasets.disable_progress_bars()
    result = run(args, argv)
    print(table(result))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
