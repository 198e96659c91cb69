"""Multi-query associative recall (MQAR) across numbers of key-value pairs, at a fixed state size.

    python -m eval mqar --model runs/bct/export --model runs/llama/llama [--pairs 4 8 16 32 64] [--seq-len 1024]

Examples come from `data.synthetic.make_mqar_example`: `pairs` key-value pairs, filler, then `--queries` of
the keys, each followed by its value (the answer). The sequence length is fixed, so the pairs sit far behind
the queries, and every bounded method holds the same state (the same KV bytes: the
BCT's cache bytes by default, `--kv-bytes`): recall then measures what the state keeps. Accuracy is per answer
token (teacher forcing, `eval/scoring.py`), over `--samples` examples per pair count, the same for every
method. SnapKV and FastKV re-compress before each answer: everything before it (earlier queries and answers
included) is compressed anew, so every query is asked of a compression that has seen it.

Payload rows: `{method, label, num_pairs, num_queries, seq_len, samples, correct, total, accuracy}`. Plot:
accuracy against the number of pairs.
"""

from __future__ import annotations

import argparse

import numpy as np

from data import make_mqar_example
from eval.common import add_model_args, header, methods_from_args, write_outputs
from eval.contenders.methods import BASELINES, Method
from eval.report import kv_bytes_table, markdown_table, pivot
from eval.scoring import KVBytes, score_example


def mqar_vocab_size(tokenizer, model_vocab: int) -> int:
    """Ids are drawn below the tokenizer's base vocabulary (no added special tokens), else the model's."""
    if tokenizer is not None and hasattr(tokenizer, "backend_tokenizer"):
        return min(tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=False), model_vocab)
    return model_vocab


def evaluate(
    methods: list[Method], pairs: list[int], queries: int, seq_len: int, samples: int, vocab: int, seed: int
) -> list[dict]:
    rows = []
    for i, num_pairs in enumerate(pairs):
        asked = min(queries, num_pairs)
        examples = [
            make_mqar_example(vocab, num_pairs, asked, seq_len, np.random.default_rng([seed, i, k]))
            for k in range(samples)
        ]
        for method in methods:
            ledger = KVBytes()
            hits = [score_example(method, example, ledger) for example in examples]
            correct, total = sum(int(h.sum()) for h in hits), sum(len(h) for h in hits)
            rows.append(
                {
                    "method": method.key,
                    "label": method.label,
                    "num_pairs": num_pairs,
                    "num_queries": asked,
                    "seq_len": seq_len,
                    "samples": samples,
                    "correct": correct,
                    "total": total,
                    "accuracy": correct / total,
                    **ledger.as_row(),
                }
            )
        print(f"{num_pairs} pairs: {[round(r['accuracy'], 3) for r in rows[-len(methods) :]]}", flush=True)
    return rows


def markdown(rows: list[dict], methods: list[Method]) -> str:
    table = pivot(rows, "num_pairs", "label", "accuracy")
    columns = [("num_pairs", "pairs", "{}")] + [(m.label, m.label, "{:.0%}") for m in methods]
    accuracy = "MQAR accuracy per answer (every bounded method at the same KV bytes):\n\n" + markdown_table(
        table, columns
    )
    return accuracy + "\n\n" + kv_bytes_table(rows, methods)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m eval mqar", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(parser, baselines=BASELINES)
    parser.add_argument("--pairs", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--queries", type=int, default=8, help="queries per example (at most the pairs)")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args(argv)

    methods, extra = methods_from_args(args)
    vocab = mqar_vocab_size(extra["tokenizer"], min(m.model.config.vocab_size for m in extra["loaded"]))
    rows = evaluate(methods, args.pairs, args.queries, args.seq_len, args.samples, vocab, args.seed)
    settings = {
        "pairs": args.pairs,
        "queries": args.queries,
        "seq_len": args.seq_len,
        "samples": args.samples,
        "vocab_size": vocab,
        "seed": args.seed,
    }
    payload = {**header("mqar", argv, methods, settings), "rows": rows}
    payload["outputs"] = write_outputs(args.out, payload, markdown(rows, methods))
    return payload
