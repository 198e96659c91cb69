"""Can a `retain` BCT recall from its memory, and does it keep the right tokens? A diagnosis on fixed weights.

    python -m eval retain-probe --model runs/smollm2_recall/export --source stdlib --seq-len 1024
                                [--pairs 8] [--samples 8] [--out DIR]

Text MQAR rows (`data.text_recall`: pairs at the start, held-out text, the questions at the end) longer than
W + C, scored teacher-forced: an answer counts when every token of its value is the greedy prediction. The
same weights run four ways, crossing two knobs:

- selection: `learned`, the model's own retention score; or `first`, an oracle that fills the retained slots
  with the first M - S tokens to leave the window (the intro and the first pairs) and never replaces them;
- read: `trained`, the retained slots' read bias as exported; or `full`, a bias of 0 per slot, so that a
  retained token weighs in the softmax what it weighed in the window. Slots not yet written are empty and
  not read (the model's live flags), under either read.

Answers are split by where their value lies: among the first M - S tokens (what the oracle keeps) or later.
If `first` + `full` recalls the first group and the model's own rows do not, the memory can be read and the
missing piece is the selection or the read weight the model was trained with (docs/design.md §8.4).
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from data.corpus import tokenize_documents
from data.text_recall import make_text_mqar_example
from eval.corpus import add_heldout_args, heldout_documents
from eval.report import command_line, write_json, write_markdown
from eval.scoring import answer_runs


@contextmanager
def probed(model: PreTrainedModel, selection: str, read: str) -> Iterator[None]:
    """Run `model` with the given selection and read (see the module docstring); restore it on exit. Every
    call of the model starts a fresh count of writes, so the oracle keeps the first chunk of each sequence."""
    config = model.config
    sinks, slots = config.memory_sink_slots, config.memory_slots
    memories = [layer.self_attn.memory for layer in model.model.layers]
    if not getattr(config, "has_live_flags", False):
        raise ValueError(
            f"retain-probe needs a `retain` model whose code keeps per-slot live flags; {config.name_or_path!r} "
            f"has memory_write_rule={config.memory_write_rule!r} or predates them (re-export it from its "
            "checkpoint with `python train.py export --checkpoint RUN/step_N --out DIR`)."
        )
    saved_bias = [memory.read_bias.detach().clone() for memory in memories]
    writes = {}  # id(write rule) -> chunks written in the current forward (the oracle keeps the first)
    fresh_count = model.register_forward_pre_hook(lambda *_: writes.clear())

    def keep_first(self, mem, features):  # mem (B, G, M, 2d + 1), features (B, G, C, 2d + 1): live last
        count = writes.get(id(self), 0)
        writes[id(self)] = count + 1
        if count > 0:
            return mem, torch.zeros(mem.shape[:-1], dtype=mem.dtype, device=mem.device)
        kept = torch.cat((mem[:, :, :sinks], features[:, :, : slots - sinks]), dim=2)
        return kept, torch.ones(mem.shape[:-1], dtype=mem.dtype, device=mem.device)

    try:
        for memory in memories:
            if selection == "first":
                memory.write.forward = types.MethodType(keep_first, memory.write)
            if read == "full":
                with torch.no_grad():
                    memory.read_bias[:, sinks:] = 0.0
        yield
    finally:
        fresh_count.remove()
        for memory, bias in zip(memories, saved_bias):
            memory.write.__dict__.pop("forward", None)
            with torch.no_grad():
                memory.read_bias.copy_(bias)


def stated_end(ids: torch.Tensor, first: int, end: int) -> int:
    """Where the first occurrence of the answer `ids[first:end]` ends: in text MQAR, its own pair's value."""
    value = ids[first:end]
    return next(i for i in range(len(ids)) if torch.equal(ids[i : i + len(value)], value)) + len(value)


def recalled(model: PreTrainedModel, example: dict) -> list[tuple[int, bool]]:
    """Per answer: (where its value ends in its pair, every token predicted)."""
    ids = example["input_ids"]
    with torch.no_grad():
        predicted = model(ids[None]).logits[0].argmax(dim=-1)  # (T,): the prediction for each next token
    return [
        (stated_end(ids, first, end), bool(torch.equal(predicted[first - 1 : end - 1], ids[first:end])))
        for first, end in answer_runs(example["answer_positions"])
    ]


def probe(model: PreTrainedModel, examples: list[dict]) -> list[dict]:
    """Recall in each (selection, read) setting, split by whether the value lies in the oracle's kept span."""
    kept = model.config.memory_slots - model.config.memory_sink_slots
    rows = []
    for selection in ("learned", "first"):
        for read in ("trained", "full"):
            with probed(model, selection, read):
                hits = [hit for example in examples for hit in recalled(model, example)]
            early = [ok for stated, ok in hits if stated <= kept]  # the value's tokens all among the first
            late = [ok for stated, ok in hits if stated > kept]
            rows.append(
                {
                    "selection": selection,
                    "read": read,
                    "early": float(np.mean(early)) if early else None,
                    "late": float(np.mean(late)) if late else None,
                    "answers": [len(early), len(late)],
                }
            )
    return rows


def streaming_control(source: PreTrainedModel, examples: list[dict], kept: int, recent: int) -> float:
    """The source model on each row cut to its first `kept` and last `recent` tokens, at contiguous positions
    (what StreamingLLM with `kept` sinks sees): recall of the values among the first `kept` tokens."""
    hits = []
    for example in examples:
        ids, length = example["input_ids"], len(example["input_ids"])
        cut = length - recent - kept  # a position p >= length - recent sits at p - cut
        with torch.no_grad():
            predicted = source(torch.cat((ids[:kept], ids[length - recent :]))[None]).logits[0].argmax(-1)
        for first, end in answer_runs(example["answer_positions"]):
            if stated_end(ids, first, end) <= kept:
                hits.append(bool(torch.equal(predicted[first - cut - 1 : end - cut - 1], ids[first:end])))
    return float(np.mean(hits))


def markdown(rows: list[dict], kept: int) -> str:
    lines = [
        f"| selection | read | values in the first {kept} tokens | later values |",
        "|---|---|---:|---:|",
    ]
    for row in rows:
        cells = [f"{row[k]:.0%}" if row[k] is not None else "—" for k in ("early", "late")]
        lines.append(f"| {row['selection']} | {row['read']} | {cells[0]} | {cells[1]} |")
    early, late = rows[0]["answers"]
    return (
        "\n".join(lines)
        + f"\n\nAnswers: {early} with their value among the first {kept} tokens, {late} later."
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m eval retain-probe", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a BCT export with memory_write_rule = retain")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder for retain-probe.json/.md")
    parser.add_argument(
        "--source-model",
        default=None,
        help="the plain model the BCT was converted from: also score it on each row cut to its first M - S "
        "and last W + C tokens (StreamingLLM with M - S sinks)",
    )
    add_heldout_args(parser)
    args = parser.parse_args(argv)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True).eval()
    if getattr(model.config, "memory_write_rule", None) != "retain":
        parser.error(f"--model {args.model} is not a BCT with memory_write_rule = retain")
    if args.seq_len <= model.config.window + model.config.chunk_size:
        parser.error(f"--seq-len must exceed W + C = {model.config.window + model.config.chunk_size}")
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
    texts = heldout_documents(args.source, args.validation_fraction, args.cache_dir)
    filler = np.concatenate(tokenize_documents(tokenizer, texts))
    examples = [
        make_text_mqar_example(
            tokenizer, filler, args.pairs, args.pairs, args.seq_len, np.random.default_rng([args.seed, k])
        )
        for k in range(args.samples)
    ]
    rows = probe(model, examples)
    kept = model.config.memory_slots - model.config.memory_sink_slots
    command = command_line("eval retain-probe", argv)
    body = markdown(rows, kept)
    if args.source_model:
        source = AutoModelForCausalLM.from_pretrained(args.source_model).eval()
        recent = model.config.window + model.config.chunk_size
        control = streaming_control(source, examples, kept, recent)
        payload_control = {"source_model": args.source_model, "recent": recent, "early": control}
        body += (
            f"\n\nThe source on each row cut to its first {kept} and last {recent} tokens (contiguous positions, "
            f"StreamingLLM with {kept} sinks): {control:.0%} of the values among the first {kept} tokens."
        )
    print(f"\n`{command}`\n\n{body}", flush=True)
    payload = {"task": "retain-probe", "command": command, "settings": vars(args), "rows": rows}
    if args.source_model:
        payload["streaming_control"] = payload_control
    if args.out:
        write_json(f"{args.out}/retain-probe.json", payload)
        write_markdown(f"{args.out}/retain-probe.md", command, body)
    return payload
