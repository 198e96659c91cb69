"""What a `retain` memory holds when the passkey question comes: a census of the slots, per layer and KV head.

    python -m eval retain-census --model runs/bench-recall/bct/export [--lengths 4096 8192] [--depths 0 0.5]
                                 [--samples 8] [--seed 1] [--out DIR]

Each passkey example (`data.make_passkey_grid`, held-out filler) is prefilled up to its answer through the
model's cache; every live slot is then traced to the position it was written from (a retained entry is the
exact pre-RoPE key and value of one token: the position whose key and value equal it; copies of one token
in layer 0 go to the earliest positions, as the stable top-M keeps them). Per layer and KV head the census
reports:

- `key held`: the share of examples whose every key token (the answer's digits, at the needle) is in a slot,
  and `key tokens held`: the share of the key's tokens in a slot, over all examples;
- `key rank`: how far the key is from being held: the rank, among the tokens written so far, of the key's
  lowest-scored token by the model's own retention score (median over examples); the key is held iff it is at
  most M - S, so a rank of 2,000 says the score would have to rise above 2,000 written tokens;
- `near needle`: slots holding a token from the needle to L·(W+C) after it, the tokens that could have read
  the needle through the stacked windows and carry it on (a relay), split by whether the example was answered
  (teacher-forced exact match); beside it, the count a uniform choice among the written tokens would give;
- the tokens held most often, over all examples.

It tells a memory that keeps the needle from one that keeps relays of it or neither (docs/design.md §8.10).
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from data import make_passkey_grid, passkey_min_length, tokenize_documents
from eval.corpus import add_heldout_args, heldout_documents
from eval.report import command_line, markdown_table, write_json, write_markdown
from eval.tools.retain_probe import stated_end
from modeling.cache import CACHE_ARG
from training.probe import answer_exact


@contextmanager
def recorded_projections(model: PreTrainedModel) -> Iterator[list[list[tuple[torch.Tensor, torch.Tensor]]]]:
    """While open, every layer's pre-RoPE (k, v), each (B, G, T, d), is appended to `records[layer]` at each
    call (a long prompt is prefilled in segments: one record per segment)."""
    records: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in model.model.layers]
    attentions = [layer.self_attn for layer in model.model.layers]

    def recording(attention, layer_records):
        project = attention.project

        def record(hidden_states):
            q, k, v = project(hidden_states)
            layer_records.append((k.detach(), v.detach()))
            return q, k, v

        return record

    try:
        for attention, layer_records in zip(attentions, records):
            attention.project = recording(attention, layer_records)
        yield records
    finally:
        for attention in attentions:
            attention.__dict__.pop("project", None)


def traced_prefill(
    model: PreTrainedModel, prompt: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """prompt (T,) -> per layer, (G, M) int64: the position each slot was written from after prefilling the
    prompt, -1 for a slot that is empty or not a token (a sink slot); per layer, the (G, T) retention score of
    every prompt token, the number the top-(M - S) ranks them by; and how many tokens were written to the
    memory, as the cache counts them (seen minus those still in the ring)."""
    held, scores = [], []
    with torch.no_grad(), recorded_projections(model) as records:
        cache = getattr(model(prompt[None], use_cache=True), CACHE_ARG)
        for layer, layer_records, layer_cache in zip(model.model.layers, records, cache.layers):
            keys = torch.cat([k for k, _ in layer_records], dim=2)[0]  # (G, T, d)
            values = torch.cat([v for _, v in layer_records], dim=2)[0]
            slots = torch.cat((layer_cache.mem_keys[0], layer_cache.mem_values[0]), dim=-1)  # (G, M, 2d)
            tokens = torch.cat((keys, values), dim=-1)  # (G, T, 2d)
            same = (slots[:, :, None] == tokens[:, None]).all(-1)  # (G, M, T)
            held.append(trace_slots(same, layer_cache.mem_live[0]))  # `retain` keeps live flags (G, M)
            scores.append(layer.self_attn.memory.write.scores(tokens[None])[0])  # (G, T)
    return held, scores, int(cache.seen[0] - cache.ring_len[0])


def key_rank(scores: torch.Tensor, start: int, end: int, written: int) -> torch.Tensor:
    """scores (G, T); the key at [start, end), `written` tokens written so far -> (G,) int64: the rank among
    the written tokens of the key's lowest-ranked token (1 = kept first; ties go to the earlier token, as the
    stable top-M gives them). The whole key is held iff this is at most M - S."""
    written_scores = scores[:, :written]  # (G, n)
    ranks = []
    for position in range(start, end):
        score = scores[:, position : position + 1]  # (G, 1)
        ahead = (written_scores > score).sum(-1) + (written_scores[:, :position] == score).sum(-1)
        ranks.append(ahead + 1)
    return torch.stack(ranks, dim=-1).amax(-1)


def trace_slots(same: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """same (G, M, T) bool: slot m equals the token at t; live (G, M) -> (G, M) positions, -1 where none.
    Equal tokens (a repeated token in layer 0 has one key and value) go to the slots in order, earliest
    first: the stable top-M keeps the earliest of tied entries, so the earliest copies are the ones held."""
    positions = torch.full(live.shape, -1, dtype=torch.long)
    for head in range(same.shape[0]):
        taken: set[int] = set()
        for slot in live[head].nonzero().flatten().tolist():
            matches = same[head, slot].nonzero().flatten().tolist()
            position = next((p for p in matches if p not in taken), -1)
            taken.add(position)
            positions[head, slot] = position
    return positions


def needle_span(example: dict) -> tuple[int, int, int]:
    """(first key position, end of the key, first answer position) of a passkey example: the key is the
    answer, stated once before the question."""
    ids, first_answer = example["input_ids"], int(example["answer_positions"][0])
    end = stated_end(ids, first_answer, len(ids))
    return end - (len(ids) - first_answer), end, first_answer


def census(model: PreTrainedModel, examples: list[dict]) -> dict:
    """Per (layer, head): key held, near-needle slots (answered / not) with the uniform count, tokens held."""
    config = model.config
    reach = config.num_hidden_layers * (config.window + config.chunk_size)
    layers, heads = config.num_hidden_layers, config.num_key_value_heads
    retained = config.memory_slots - config.memory_sink_slots  # the slots that hold tokens
    key_held, key_tokens = np.zeros((layers, heads)), np.zeros((layers, heads))
    ranks = [[[] for _ in range(heads)] for _ in range(layers)]
    near = [[[] for _ in range(heads)] for _ in range(layers)]
    tokens = [[Counter() for _ in range(heads)] for _ in range(layers)]
    answered, uniform, written_counts = [], [], []
    for example in examples:
        ids = example["input_ids"]
        start, end, first_answer = needle_span(example)
        with torch.no_grad():
            answered.append(answer_exact(model, example, model.device))
        held, scores, written = traced_prefill(model, ids[:first_answer])
        written = max(written, 1)
        written_counts.append(written)
        span = min(end + reach, written) - start
        uniform.append(retained * max(span, 0) / written)
        for layer, (positions, layer_scores) in enumerate(zip(held, scores)):
            layer_ranks = key_rank(layer_scores, start, end, written)
            for head in range(heads):
                ranks[layer][head].append(int(layer_ranks[head]))
                kept = positions[head][positions[head] >= 0]
                in_slots = torch.isin(torch.arange(start, end), kept)  # (key length,)
                key_held[layer, head] += bool(in_slots.all())
                key_tokens[layer, head] += float(in_slots.float().mean())
                near[layer][head].append(int(((kept >= start) & (kept < end + reach)).sum()))
                tokens[layer][head].update(ids[kept].tolist())
    answered = np.array(answered)
    rows = []
    for layer in range(layers):
        for head in range(heads):
            counts = np.array(near[layer][head])
            rows.append(
                {
                    "layer": layer,
                    "head": head,
                    "key_held": key_held[layer, head] / len(examples),
                    "key_tokens": key_tokens[layer, head] / len(examples),
                    "key_rank": float(np.median(ranks[layer][head])),
                    "near": float(counts.mean()),
                    "near_answered": float(counts[answered].mean()) if answered.any() else None,
                    "near_missed": float(counts[~answered].mean()) if (~answered).any() else None,
                    "near_uniform": float(np.mean(uniform)),
                    "top_tokens": tokens[layer][head].most_common(5),
                }
            )
    return {
        "answered": int(answered.sum()),
        "examples": len(examples),
        "reach": reach,
        "retained": retained,
        "written": float(np.mean(written_counts)),
        "rows": rows,
    }


def markdown(result: dict, tokenizer) -> str:
    rows = [
        {**row, "held_most": ", ".join(repr(tokenizer.decode([t])) for t, _ in row["top_tokens"])}
        for row in result["rows"]
    ]
    columns = [
        ("layer", "layer", "{}"),
        ("head", "KV head", "{}"),
        ("key_held", "key held", "{:.0%}"),
        ("key_tokens", "key tokens held", "{:.0%}"),
        ("key_rank", "key rank (median)", "{:.0f}"),
        ("near_answered", "near needle, answered", "{:.1f}"),
        ("near_missed", "near needle, missed", "{:.1f}"),
        ("near_uniform", "uniform", "{:.1f}"),
        ("held_most", "held most often", "{}"),
    ]
    return (
        f"Answered {result['answered']} of {result['examples']} (exact match). Near needle: slots holding a "
        f"token from the needle to {result['reach']} tokens after it (L·(W+C)).\n\n"
        + markdown_table(rows, columns)
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m eval retain-census", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a BCT export with memory_write_rule = retain")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--samples", type=int, default=8, help="examples per (length, depth) cell")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=None, help="folder for retain-census.json/.md")
    add_heldout_args(parser)
    args = parser.parse_args(argv)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True).eval()
    if getattr(model.config, "memory_write_rule", None) != "retain":
        parser.error(f"--model {args.model} is not a BCT with memory_write_rule = retain")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if min(args.lengths) <= passkey_min_length(tokenizer):
        parser.error(
            f"every --lengths must exceed {passkey_min_length(tokenizer)} tokens with this tokenizer."
        )
    filler = np.concatenate(
        tokenize_documents(
            tokenizer, heldout_documents(args.source, args.validation_fraction, args.cache_dir)
        )
    )
    grid = make_passkey_grid(tokenizer, filler, args.lengths, args.depths, args.samples, args.seed)
    result = census(model, [example for cell in grid.values() for example in cell])
    command = command_line("eval retain-census", argv)
    body = markdown(result, tokenizer)
    print(f"\n`{command}`\n\n{body}", flush=True)
    payload = {"task": "retain-census", "command": command, "settings": vars(args), **result}
    if args.out:
        write_json(f"{args.out}/retain-census.json", payload)
        write_markdown(f"{args.out}/retain-census.md", command, body)
    return payload
