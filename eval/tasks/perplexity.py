"""Loss by token position on held-out long documents: does quality hold far past the training length?

    python -m eval perplexity --model runs/bct/export --model runs/llama/llama [--context 8192] [--windows 4]

Each held-out window (`eval/corpus.py`, Shakespeare by default) is one stream from position 0, fed
`--segment` tokens at a time through each method's own cache: BCT through its bounded cache, the baselines
through theirs (full attention keeps everything; sliding window and sinks hold `--kv-bytes` of KV, the
BCT's cache bytes by default). SnapKV and FastKV compress a prompt for an answer and do not stream: they
are scored in runs of `--compress-every` tokens, the whole text before each run compressed anew to the
same bytes less the run (`eval/compressed_text.py`; one prefill per run). The loss of the token at
position `p` (predicted from tokens `< p`) is averaged, token-weighted over all windows, in equal-width
position buckets `[a, b)`. Use a context of at least 16× the training length.

Payload rows: `{method, label, bucket_start, bucket_end, tokens, loss, ppl}`; `summary` has each method's
mean loss over all positions; `compressors` states how SnapKV and FastKV were scored and what it cost
(prefills, prefill tokens, seconds, the most KV bytes held). Plot: loss against position, one line per method.
"""

from __future__ import annotations

import argparse
import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F

from eval.common import add_model_args, header, methods_from_args, write_outputs
from eval.compressed_text import PROTOCOL, CompressionCost, check_run_length, compressed_losses
from eval.contenders.methods import Method
from eval.corpus import add_heldout_args, heldout_documents, token_windows
from eval.report import markdown_table, pivot


@torch.no_grad()
def position_losses(method: Method, input_ids: torch.Tensor) -> torch.Tensor:
    """input_ids (T,) -> (T,) float64 loss of each token given the earlier ones (position 0: NaN)."""
    targets = input_ids[1:]
    losses = [torch.full((1,), math.nan, dtype=torch.float64)]
    cache = method.new_cache()
    for offset, logits in method.stream(input_ids[None], cache):
        logits = logits[0, : len(targets) - offset]  # the last token predicts nothing
        step = F.cross_entropy(logits.float(), targets[offset : offset + len(logits)], reduction="none")
        losses.append(step.double())
    return torch.cat(losses)


def bucket_edges(context: int, buckets: int | None, width: int | None) -> list[int]:
    """Equal-width edges 0, w, 2w, ..., context (`width` wins over `buckets`)."""
    width = width or math.ceil(context / (buckets or 16))
    return [*range(0, context, width), context]


def bucket_means(losses: list[torch.Tensor], edges: list[int]) -> list[tuple[int, float]]:
    """Token-weighted (count, mean) of the losses whose position falls in each bucket [edges[i], edges[i+1])."""
    out = []
    for start, end in itertools.pairwise(edges):
        values = torch.cat([loss[start:end] for loss in losses])
        values = values[~values.isnan()]
        out.append((len(values), float(values.mean()) if len(values) else math.nan))
    return out


def method_losses(
    method: Method, windows: list[np.ndarray], compress_every: int, cost: CompressionCost
) -> list[torch.Tensor]:
    """(T,) losses per window: streamed, or for a prompt compressor re-compressed before every run."""
    if method.compresses_prompt:
        return [compressed_losses(method, torch.from_numpy(w), compress_every, cost) for w in windows]
    return [position_losses(method, torch.from_numpy(window)) for window in windows]


def evaluate(
    methods: list[Method],
    windows: list[np.ndarray],
    edges: list[int],
    compress_every: int = 64,
    costs: dict[str, CompressionCost] | None = None,
) -> tuple[list[dict], dict]:
    """Bucket rows and each method's mean loss; the compressors' costs go into `costs` (by label)."""
    rows, summary = [], {}
    costs = {} if costs is None else costs
    for method in methods:
        cost = costs.setdefault(method.label, CompressionCost()) if method.compresses_prompt else None
        losses = method_losses(method, windows, compress_every, cost)
        for (start, end), (tokens, loss) in zip(itertools.pairwise(edges), bucket_means(losses, edges)):
            ppl = math.exp(loss) if tokens else None
            rows.append(
                {
                    "method": method.key,
                    "label": method.label,
                    "bucket_start": start,
                    "bucket_end": end,
                    "tokens": tokens,
                    "loss": loss if tokens else None,
                    "ppl": ppl,
                }
            )
        every = torch.cat(losses)
        summary[method.label] = float(every[~every.isnan()].mean())
        print(f"{method.label}: mean loss {summary[method.label]:.4f}", flush=True)
    return rows, summary


def markdown(
    rows: list[dict], methods: list[Method], summary: dict, compress_every: int | None = None
) -> str:
    named = [{**row, "position": f"{row['bucket_start']:,}–{row['bucket_end']:,}"} for row in rows]
    table = pivot(named, "position", "label", "loss")
    table.append({"position": "all", **summary})
    columns = [("position", "position", "{}")] + [(m.label, m.label, "{:.3f}") for m in methods]
    text = "Mean loss (nats/token) by token position, held-out text:\n\n" + markdown_table(table, columns)
    compressors = [m.label for m in methods if m.compresses_prompt]
    if compressors and compress_every:
        text += (
            f"\n\n{' and '.join(compressors)} do not stream: before each run of {compress_every} tokens the "
            "whole text so far is compressed anew to the same bytes less the run, then the run is decoded "
            "against it (one prefill per run)."
        )
    return text


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m eval perplexity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(parser, baselines=("full", "sliding", "sinks", "snapkv", "fastkv"))
    parser.add_argument(
        "--context", type=int, default=4096, help="tokens per window (>= 16x the training length)"
    )
    parser.add_argument("--windows", type=int, default=4, help="held-out windows averaged")
    parser.add_argument("--buckets", type=int, default=16, help="equal-width position buckets")
    parser.add_argument(
        "--bucket-width", type=int, default=None, help="bucket width in tokens (overrides --buckets)"
    )
    parser.add_argument(
        "--compress-every",
        type=int,
        default=64,
        help="SnapKV/FastKV: target tokens per run; the text before each run is compressed anew "
        "(one prefill per run; smaller than the budget's entries less the observation window)",
    )
    add_heldout_args(parser)
    parser.add_argument(
        "--join-documents",
        action="store_true",
        help="pack the held-out documents into one stream (an eos after each, as in training) before "
        "cutting windows: for contexts longer than any one held-out document",
    )
    args = parser.parse_args(argv)

    methods, extra = methods_from_args(args)
    if extra["tokenizer"] is None:
        parser.error("perplexity needs a tokenizer: none of the --model folders has one.")
    for method in methods:
        if method.compresses_prompt:
            try:
                check_run_length(method, args.compress_every)
            except ValueError as error:
                parser.error(str(error))
    texts = heldout_documents(args.source, args.validation_fraction, args.cache_dir)
    windows = token_windows(extra["tokenizer"], texts, args.context, args.windows, args.join_documents)
    edges = bucket_edges(args.context, args.buckets, args.bucket_width)
    costs: dict[str, CompressionCost] = {}
    rows, summary = evaluate(methods, windows, edges, args.compress_every, costs)
    settings = {
        "context": args.context,
        "windows": len(windows),
        "edges": edges,
        "segment": args.segment,
        "compress_every": args.compress_every,
        "source": args.source,
        "validation_fraction": args.validation_fraction,
        "join_documents": args.join_documents,
    }
    payload = {**header("perplexity", argv, methods, settings), "rows": rows, "summary": summary}
    if costs:
        payload["compressors"] = {
            "protocol": PROTOCOL,
            "cost": {label: cost.as_dict() for label, cost in costs.items()},
        }
    payload["outputs"] = write_outputs(
        args.out, payload, markdown(rows, methods, summary, args.compress_every)
    )
    return payload
