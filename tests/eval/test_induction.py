"""`python -m eval induction` scores copying per id range: rows stay in their range, a model that copies
solves every range, a random one is near chance, and the command writes its outputs from a saved model."""

import json

import pytest
import torch

from eval.contenders.methods import make_method
from eval.tasks import induction

from .conftest import tiny_llama

RANGES = [(3, 120), (120, 320)]


def test_rows_hold_only_ids_of_their_range_and_no_special_ids(tokenizer):
    special = [4, 50]
    for low, high in [(3, 40), (40, 200), (0, 12)]:
        for example in induction.range_examples(low, high, 64, 3, 0, special, segment=32):
            ids = example["input_ids"]
            assert int(ids.min()) >= low and int(ids.max()) < high
            assert not any(bool((ids == s).any()) for s in special)
            positions = example["answer_positions"]
            assert torch.equal(example["labels"][positions], ids[positions])


def test_the_segment_sets_how_far_back_the_repeat_lies():
    far = [induction.range_examples(3, 300, 256, 1, s, [], segment=256)[0] for s in range(6)]
    assert all(len(e["answer_positions"]) == 7 for e in far)  # one segment: one span of 8, 7 answers
    distances = []
    for e in far:  # the row's last 8 ids repeat the 8 ids `d` earlier
        ids = e["input_ids"]
        distances.append(next(d for d in range(8, 249) if torch.equal(ids[248 - d : 256 - d], ids[248:])))
    assert max(distances) > 24


def test_the_lookback_keeps_a_repeat_a_segment_and_reaches_across_segments():
    rows = [induction.range_examples(3, 300, 256, 1, s, [], segment=32, lookback=200)[0] for s in range(6)]
    assert all(len(e["answer_positions"]) == 8 * 7 for e in rows)  # 8 segments, 7 answers each
    distances = []
    for e in rows:  # the row's last 8 ids repeat the 8 ids `d` earlier, d <= 200
        ids = e["input_ids"]
        distances.append(next(d for d in range(8, 201) if torch.equal(ids[248 - d : 256 - d], ids[248:])))
    assert max(distances) > 32  # beyond the segment


def test_a_model_that_copies_solves_every_range_and_a_random_one_is_near_chance(oracle, llama, tokenizer):
    rows = induction.evaluate([make_method(oracle, "full", None)], RANGES, 64, 3, 0, [0])
    # A span's first answer is ambiguous when its previous id also occurs later in the row: ~1 answer in 40.
    assert all(row["accuracy"] >= 0.95 for row in rows), rows
    assert all(row["total"] == 3 * 2 * 7 for row in rows)  # 2 segments of 32 a row, span 8: 7 answers each
    rows = induction.evaluate([make_method(llama, "full", None)], RANGES, 64, 3, 0, [0])
    assert all(row["accuracy"] <= 0.15 for row in rows), rows
    assert rows[0]["chance"] == pytest.approx(1 / 117)


def test_the_command_writes_its_outputs_and_refuses_ranges_past_the_vocabulary(tmp_path, tokenizer):
    model = tmp_path / "llama"
    tiny_llama(len(tokenizer)).save_pretrained(model)
    tokenizer.save_pretrained(model)
    payload = induction.main(
        [
            "--model",
            str(model),
            "--ranges",
            "3:40",
            "--seq-len",
            "64",
            "--samples",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    on_disk = json.loads((tmp_path / "induction.json").read_text())
    assert on_disk["rows"] == payload["rows"] and on_disk["settings"]["ranges"] == [[3, 40]]
    assert (tmp_path / "induction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        induction.main(["--model", str(model), "--ranges", f"3:{len(tokenizer) + 1}", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        induction.main(["--model", str(model), "--ranges", "40:3", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        induction.main(
            ["--model", str(model), "--seq-len", "64", "--induction-lookback", "64", "--out", str(tmp_path)]
        )
    assert on_disk["settings"]["lookback"] is None
