"""How many steps a 2-layer model needs before it binds keys to values at all: a plain HF Llama beside the
same-shape BCT, on key-value rows short enough that no memory is involved.

    python -m eval binding-probe [--seq-len 64] [--pairs 2] [--steps 800] [--batch-size 64] [--lr 1e-3]
                                 [--copy-rows 32] [--copy-len 32] [--copy-span 8]

Both models see the same rows (`data.recall.make_recall_batch`, key-value only, answer-only loss): the
Llama is `LlamaForCausalLM`, the BCT has no memory and a window covering the row (exactly causal attention),
so the two differ only in implementation. Training accuracy on the answers is printed every `--log-every`
steps. Below binding the accuracy sits at the "bag of values" level (1 / pairs: the model knows which values
occurred, not which key each belongs to); induction forms after a plateau, and the step at which accuracy
leaves that level is what this probe measures. The recall study (`recall-study`) needs at least this many
steps at its own shape before its multi-pair numbers mean anything.

`--copy-rows` adds that many short copy rows a step (`data.recall.make_copy_example`: `--copy-len` random
tokens ending with a repeat of an earlier span, at a distance that varies by row; loss on the repeat) beside
the key-value rows. At this 64-token shape they are not enough on their own (docs/design.md §8.3): with 32
key-value and 32 copy rows a step, seed 0 still sat at 39% at 8 pairs after 2,000 steps.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from data.recall import answer_correct, make_recall_batch
from eval.report import command_line
from modeling import BCTConfig, BCTForCausalLM

SHAPE = {"vocab_size": 128, "hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 2}
HEADS = 4


def build(kind: str, seq_len: int, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    if kind == "llama":
        config = LlamaConfig(
            **SHAPE, num_attention_heads=HEADS, num_key_value_heads=HEADS, tie_word_embeddings=True
        )
        return LlamaForCausalLM(config)
    config = BCTConfig(
        **SHAPE,
        num_attention_heads=HEADS,
        memory_slots=0,
        window=seq_len,
        chunk_size=16,
        tie_word_embeddings=True,
    )
    return BCTForCausalLM(config)


def train(kind: str, args: argparse.Namespace) -> list[dict]:
    """Train one model; return `[{step, loss, accuracy}]` averaged over each logging interval."""
    model = build(kind, args.seq_len, args.seed).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    ranges = [(3, args.seq_len - 2 * args.pairs - 1)]  # any distance a row can hold
    copy_ranges = [(args.copy_span, args.copy_len - args.copy_span)]
    curve, loss_sum, correct, total = [], 0.0, 0, 0
    for step in range(args.steps):
        rng = np.random.default_rng([args.seed, step])  # the same rows for both models
        batch = make_recall_batch(
            ["kv"], SHAPE["vocab_size"], args.seq_len, args.pairs, ranges, args.batch_size, rng
        )
        out = model(input_ids=batch["input_ids"], labels=batch["labels"])
        loss = out.loss
        if args.copy_rows:  # short rows: a second forward, their answers not counted in the accuracy
            copies = make_recall_batch(
                ["copy"], SHAPE["vocab_size"], args.copy_len, args.copy_span, copy_ranges, args.copy_rows, rng
            )
            loss = loss + model(input_ids=copies["input_ids"], labels=copies["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            positions = batch["answer_positions"]  # (B, pairs)
            correct += int(answer_correct(out.logits, batch["input_ids"], positions).sum())
            total += positions.numel()
            loss_sum += loss.item()
        if (step + 1) % args.log_every == 0:
            curve.append({"step": step + 1, "loss": loss_sum / args.log_every, "accuracy": correct / total})
            print(
                f"  {kind} step {step + 1}: loss {curve[-1]['loss']:.3f} accuracy {curve[-1]['accuracy']:.0%}"
            )
            loss_sum, correct, total = 0.0, 0, 0
    return curve


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m eval binding-probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", nargs="+", default=["llama", "bct"], choices=["llama", "bct"])
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--copy-rows", type=int, default=0, help="short copy rows per step (0: none)")
    parser.add_argument("--copy-len", type=int, default=32, help="tokens per copy row")
    parser.add_argument("--copy-span", type=int, default=8, help="tokens per copied span")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest for this size)")
    parser.add_argument("--out", default=None, help="write the curves to this JSON file")
    args = parser.parse_args(argv)
    if args.seq_len < 4 * args.pairs + 4:
        parser.error(
            f"--seq-len {args.seq_len} is not allowed: at least 4 * pairs + 4 = {4 * args.pairs + 4}"
        )
    if args.copy_rows < 0:
        parser.error(f"--copy-rows {args.copy_rows} is not allowed: a count >= 0.")
    if args.copy_rows and not 2 <= args.copy_span <= args.copy_len // 2:
        parser.error(
            f"--copy-span {args.copy_span} is not allowed: between 2 and copy_len / 2 = {args.copy_len // 2}."
        )
    torch.set_num_threads(args.threads)
    print(f"bag-of-values level at {args.pairs} pairs: {1 / args.pairs:.0%}", flush=True)
    started = time.perf_counter()
    payload = {
        "command": command_line("eval binding-probe", argv),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "curves": {kind: train(kind, args) for kind in args.models},
        "seconds": time.perf_counter() - started,
    }
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(payload, handle, indent=1)
    return payload
