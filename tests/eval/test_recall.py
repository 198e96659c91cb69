"""Recall by distance (eval/recall.py) and the recall study end to end in its quick mode (eval/recall_study.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from data.recall import bucket_of, distance_buckets, make_recall_batch
from eval.tasks import recall
from eval.tools import recall_study


@pytest.mark.parametrize(
    ("distance", "bucket"),
    [(1, "near"), (31, "near"), (32, "reach"), (47, "reach"), (95, "reach"), (96, "far"), (1000, "far")],
)
def test_bucket_assignment(distance, bucket):
    # W=32, C=16, L=2: near d < 32, stacked reach 32 <= d < 2·(32+16) = 96, far d >= 96.
    assert bucket_of(distance, window=32, chunk_size=16, num_layers=2) == bucket


def test_bucket_ranges_and_counts():
    buckets = distance_buckets(window=32, chunk_size=16, num_layers=2, seq_len=256)
    assert buckets == {"near": (1, 31), "reach": (32, 95), "far": (96, 255)}
    assert distance_buckets(32, 16, 2, seq_len=64) == {"near": (1, 31), "reach": (32, 63)}  # no far row
    hits = torch.tensor([[True, False], [True, True], [False, False]])
    distances = torch.tensor([[5, 40], [96, 31], [95, 200]])
    summary = recall.summarize(hits, distances, buckets)
    assert {k: (v["correct"], v["total"]) for k, v in summary.items()} == {
        "near": (2, 2),
        "reach": (0, 2),
        "far": (1, 2),
    }
    assert all(bucket_of(int(d), 32, 16, 2) in buckets for d in distances.flatten())


class Lookup(nn.Module):
    """Predicts, at every position, a fixed function of the row: the next token (`peek`) or the current one."""

    def __init__(self, vocab: int, peek: bool):
        super().__init__()
        self.vocab, self.peek = vocab, peek

    def forward(self, input_ids):
        target = torch.roll(input_ids, -1, dims=1) if self.peek else input_ids
        return SimpleNamespace(logits=nn.functional.one_hot(target, self.vocab).float())


def test_answer_hits_read_the_logits_before_each_answer():
    batch = make_recall_batch(
        ["kv", "passkey"], 64, 96, 3, [(1, 15), (16, 40), (41, 90)], 10, np.random.default_rng(0)
    )
    assert recall.answer_hits(Lookup(64, peek=True), batch, batch_size=4).all()
    assert not recall.answer_hits(Lookup(64, peek=False), batch, batch_size=4).any()


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("recall-study")
    argv = ["--quick", "--rules", "gated", "--seeds", "0", "--jobs", "1", "--threads", "1", "--save-models"]
    payload = recall_study.main([*argv, "--out", str(out)])
    return out, payload


def test_quick_study_writes_table_plot_and_numbers(quick_study):
    out, payload = quick_study
    for name in ("recall-study.json", "recall-study.md", "recall-study.png"):
        assert (out / name).is_file(), name
    table = (out / "recall-study.md").read_text()
    assert table.startswith("`python -m eval recall-study --quick")
    for heading in (
        "near d<16",
        "stacked reach 16≤d<48",
        "far d≥48",
        "writes closed",
        "chance",
        "bag of values",
    ):
        assert heading in table, heading
    for label in ("BCT gated", "Full attention", "Sliding window (M+W)", "Sinks (writes closed)"):
        assert f"| {label} |" in table, label
    saved = json.loads((out / "recall-study.json").read_text())
    assert saved["command"] == payload["command"]
    rows = saved["rows"]
    assert {r["bucket"] for r in rows} == {"near", "reach", "far"}
    assert {r["chance"] for r in rows} == {1 / 16}  # vocabulary 64: 16 distinct values
    assert {(r["num_pairs"], r["bag"], r["bag_elimination"]) for r in rows} == {(1, 1.0, 1.0), (2, 0.5, 0.75)}
    variants = {(r["method"], r["variant"]) for r in rows}
    assert ("bct-gated", "closed") in variants and ("full", "closed") not in variants
    assert ("sinks", "closed") not in variants  # closed in training already: nothing to close
    assert {r["key"] for r in saved["runs"]} == {"bct-gated", "full", "sliding", "sinks"}
    assert all(r["history"] and r["train_seconds"] > 0 for r in saved["runs"])
    gated = next(r for r in saved["runs"] if r["key"] == "bct-gated")
    assert any(key.startswith("memory/") for key in gated["history"][-1])  # memory signals logged


def test_recall_cli_scores_a_saved_model(quick_study, tmp_path):
    out, _ = quick_study
    payload = recall.main(
        ["--model", str(out / "models" / "bct-gated-s0"), "--seq-len", "80", "--samples", "8", "--pairs", "1",
         "--out", str(tmp_path)]
    )  # fmt: skip
    assert payload["settings"]["buckets"] == {"near": (1, 15), "reach": (16, 47), "far": (48, 79)}
    assert {(r["variant"], r["bucket"]) for r in payload["rows"]} == {
        (v, b) for v in ("open", "closed") for b in ("near", "reach", "far")
    }
    assert (tmp_path / "recall.md").is_file() and (tmp_path / "recall.png").is_file()


def test_study_batches_add_short_copy_rows_inside_the_window():
    args = recall_study.parse_args(["--quick", "--batch-size", "6", "--copy-rows", "3"])
    batch, copies = recall_study.training_batch(args, 2, [(1, 79)], np.random.default_rng(0))
    assert batch["input_ids"].shape == (6, args.seq_len) and copies["input_ids"].shape == (3, args.copy_len)
    assert batch["answer_positions"].shape == (6, 2)  # the curriculum's pairs
    assert copies["answer_positions"].shape == (3, args.copy_span - 1)
    assert ((copies["distances"] >= args.copy_span) & (copies["distances"] < args.window)).all()
    args = recall_study.parse_args(["--quick", "--copy-rows", "0"])
    assert recall_study.training_batch(args, 2, [(1, 79)], np.random.default_rng(0))[1] is None
    for bad in (["--copy-rows", "-1"], ["--copy-span", "1"], ["--copy-span", "16"], ["--copy-len", "20"]):
        with pytest.raises(SystemExit):
            recall_study.parse_args(["--quick", *bad])
