"""Multi-query associative recall (MQAR) across numbers of key-value pairs, at a fixed state size.

    python -m eval mqar --model runs/bct/export --model runs/llama/llama [--pairs 4 8 16 32 64] [--seq-len 1024]
    python -m eval mqar --format text --source stdlib --model ...   # in words, for pretrained models

Examples come from `data.synthetic.make_mqar_example` (`--format tokens`, random ids: for models trained on
that format) or `data.text_recall.make_text_mqar_example` (`--format text`: "The code for apple is 417."
pairs, held-out text as filler, then the questions; a pretrained model reads it): `pairs` key-value pairs,
filler, then `--queries` of the keys, each followed by its value (the answer). The sequence length is fixed,
so the pairs sit far behind the queries, and every bounded method holds the same state (the same KV bytes:
the BCT's cache bytes by default, `--kv-bytes`): recall then measures what the state keeps. Accuracy is per
answer (teacher forcing, `eval/scoring.py`; an answer of several tokens counts when all of them are
predicted), over `--samples` examples per pair count, the same for every method. SnapKV and FastKV
re-compress before each answer: everything before it (earlier queries and answers included) is compressed
anew, so every query is asked of a compression that has seen it.

Levels printed beside the table: chance (1/number of values) and "bag of values" (1/pairs: the values that
occurred, not which key holds which).

Payload rows: `{method, label, num_pairs, num_queries, seq_len, samples, correct, total, accuracy}`. Plot:
accuracy against the number of pairs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch

from data import make_mqar_example, mqar_token_ranges, tokenize_documents
from data.text_recall import TEXT_MQAR_VALUES, make_text_mqar_example, text_mqar_fixed_length
from eval.common import add_model_args, header, methods_from_args, write_outputs
from eval.contenders.methods import BASELINES, Method
from eval.corpus import add_heldout_args, heldout_documents
from eval.report import kv_bytes_table, markdown_table, pivot
from eval.scoring import KVBytes, answer_runs, score_example


def mqar_vocab_size(tokenizer, model_vocab: int) -> int:
    """Ids are drawn below the tokenizer's base vocabulary (no added special tokens), else the model's."""
    if tokenizer is not None and hasattr(tokenizer, "backend_tokenizer"):
        return min(tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=False), model_vocab)
    return model_vocab


ExampleMaker = Callable[[int, int, int], list[dict]]  # (num_pairs, asked, pair index) -> the examples


def seeded_examples(make_one: Callable, samples: int, seed: int) -> ExampleMaker:
    """`samples` examples per pair count from `make_one(num_pairs, asked, rng)`, example k of the i-th pair
    count drawn from `default_rng([seed, i, k])`: the same examples for every method and run."""

    def make(num_pairs: int, asked: int, i: int) -> list[dict]:
        return [make_one(num_pairs, asked, np.random.default_rng([seed, i, k])) for k in range(samples)]

    return make


def token_examples(vocab: int, seq_len: int, samples: int, seed: int) -> ExampleMaker:
    """`--format tokens`: random-id examples (data.synthetic.make_mqar_example)."""
    return seeded_examples(
        lambda n, asked, rng: make_mqar_example(vocab, n, asked, seq_len, rng), samples, seed
    )


def text_examples(tokenizer, filler: np.ndarray, seq_len: int, samples: int, seed: int) -> ExampleMaker:
    """`--format text`: examples in words, `filler` (1-D) held-out token ids (data.text_recall)."""

    def make_one(n: int, asked: int, rng: np.random.Generator) -> dict:
        return make_text_mqar_example(tokenizer, filler, n, asked, seq_len, rng)

    return seeded_examples(make_one, samples, seed)


def answers_recalled(example: dict, hits: torch.Tensor) -> list[bool]:
    """Per answer (a run of consecutive answer positions): every one of its tokens predicted.
    `hits` (k,) bool follows `example["answer_positions"]` (k,), which lists the runs in order."""
    sizes = [end - first for first, end in answer_runs(example["answer_positions"])]
    return [bool(run.all()) for run in torch.split(hits, sizes)]


def evaluate(
    methods: list[Method], make_examples: ExampleMaker, pairs: list[int], queries: int
) -> list[dict]:
    """Every method on the same examples: `make_examples(num_pairs, min(queries, num_pairs), i)` for the
    `i`-th pair count."""
    rows = []
    for i, num_pairs in enumerate(pairs):
        asked = min(queries, num_pairs)
        examples = make_examples(num_pairs, asked, i)
        for method in methods:
            ledger = KVBytes()
            recalled = [answers_recalled(e, score_example(method, e, ledger)) for e in examples]
            correct, total = sum(map(sum, recalled)), sum(map(len, recalled))
            rows.append(
                {
                    "method": method.key,
                    "label": method.label,
                    "num_pairs": num_pairs,
                    "num_queries": asked,
                    "seq_len": len(examples[0]["input_ids"]),
                    "samples": len(examples),
                    "correct": correct,
                    "total": total,
                    "accuracy": correct / total,
                    **ledger.as_row(),
                }
            )
        print(f"{num_pairs} pairs: {[round(r['accuracy'], 3) for r in rows[-len(methods) :]]}", flush=True)
    return rows


def markdown(rows: list[dict], methods: list[Method], values: int) -> str:
    table = pivot(rows, "num_pairs", "label", "accuracy")
    for row in table:  # the two levels a method must beat, beside its accuracy
        row["chance"], row["bag"] = 1 / values, 1 / row["num_pairs"]
    columns = [("num_pairs", "pairs", "{}")] + [(m.label, m.label, "{:.0%}") for m in methods]
    columns += [("chance", "chance", "{:.1%}"), ("bag", "bag of values", "{:.0%}")]
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
    parser.add_argument(
        "--format",
        choices=["tokens", "text"],
        default="tokens",
        help="tokens: random ids (models trained on it); text: pairs in words with held-out text as filler",
    )
    add_heldout_args(parser)
    args = parser.parse_args(argv)

    methods, extra = methods_from_args(args)
    tokenizer = extra["tokenizer"]
    settings = {
        key: getattr(args, key) for key in ("format", "pairs", "queries", "seq_len", "samples", "seed")
    }
    if args.format == "text":
        if tokenizer is None:
            parser.error("--format text needs a tokenizer: none of the --model folders has one.")
        needed = text_mqar_fixed_length(tokenizer, max(args.pairs), min(args.queries, max(args.pairs)))
        if args.seq_len <= needed:
            parser.error(
                f"--seq-len must exceed {needed} tokens for --pairs {max(args.pairs)} with this tokenizer."
            )
        texts = heldout_documents(args.source, args.validation_fraction, args.cache_dir)
        filler = np.concatenate(tokenize_documents(tokenizer, texts))
        make_examples = text_examples(tokenizer, filler, args.seq_len, args.samples, args.seed)
        values = len(TEXT_MQAR_VALUES)
        settings.update(source=args.source, validation_fraction=args.validation_fraction)
    else:
        vocab = mqar_vocab_size(tokenizer, min(m.model.config.vocab_size for m in extra["loaded"]))
        make_examples = token_examples(vocab, args.seq_len, args.samples, args.seed)
        values = len(mqar_token_ranges(vocab)["values"])
        settings["vocab_size"] = vocab

    rows = evaluate(methods, make_examples, args.pairs, args.queries)
    payload = {**header("mqar", argv, methods, settings), "rows": rows}
    payload["outputs"] = write_outputs(args.out, payload, markdown(rows, methods, values))
    return payload
