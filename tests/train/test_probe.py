"""The passkey probe during training (training/probe.py) and the kept best checkpoint (training/best.py)."""

from __future__ import annotations

import json

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from data import make_passkey_example
from tests.train.runner import debug_args, run_train
from training.best import BEST_FILE, BestCheckpoint
from training.probe import answer_exact
from training.tracking import read_metrics

PROBE = ("probe.every=5", "probe.lengths=[192,256]", "probe.samples=2", "train.keep_best=probe/passkey")


def test_answer_exact_agrees_with_the_full_logits_and_can_be_true(baseline):
    """Scored from the answer logits only (`logits_to_keep`), as from every position's logits; an example
    whose answer is the model's own greedy continuation scores True, one wrong token False."""
    model = AutoModelForCausalLM.from_pretrained(baseline / "export", trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(baseline / "export")
    filler = np.arange(3, 500)
    example = make_passkey_example(tokenizer, filler, 192, 0.0, np.random.default_rng(0))
    ids, answers = example["input_ids"], example["answer_positions"]
    with torch.no_grad():
        for _ in range(len(answers)):  # greedy, one answer token at a time, under teacher forcing
            logits = model(input_ids=ids[None]).logits[0]  # (T, V)
            first_wrong = next((a for a in answers if logits[a - 1].argmax() != ids[a]), None)
            if first_wrong is None:
                break
            ids[first_wrong] = logits[first_wrong - 1].argmax()
        full = model(input_ids=ids[None]).logits[0, answers - 1].argmax(-1)
    assert torch.equal(full, ids[answers])
    assert answer_exact(model, example, torch.device("cpu"))
    ids[answers[-1]] = (ids[answers[-1]] + 1) % 512
    assert not answer_exact(model, example, torch.device("cpu"))


def test_probed_run_keeps_its_best_checkpoint_across_a_resume(data_cache, tmp_path):
    """Probe metrics (writes open and closed) at every probe step, the best step's checkpoint kept from
    pruning (keep_last 1) and exported; a resumed run continues the record instead of starting it over."""
    out = tmp_path / "run"
    args = debug_args(out, data_cache, *PROBE, "train.keep_last=1", "train.save_every=10")
    run_train([*args, "max_steps=10"])
    run_train([*args, "max_steps=20"])  # resumes at step 10
    metrics = read_metrics(out / "metrics.jsonl")
    probed = {m["step"]: m for m in metrics if "probe/passkey" in m}
    assert sorted(probed) == [5, 10, 15, 20]
    for m in probed.values():
        assert {"probe/passkey_192", "probe/passkey_256", "probe/passkey_closed"} <= set(m)
        assert m["probe/passkey"] == (m["probe/passkey_192"] + m["probe/passkey_256"]) / 2
    values = {step: m["probe/passkey"] for step, m in probed.items()}
    best_step = min(step for step, value in values.items() if value == max(values.values()))  # ties: earliest
    record = json.loads((out / BEST_FILE).read_text())
    assert record == {
        "metric": "probe/passkey",
        "value": values[best_step],
        "step": best_step,
        "checkpoint": f"step_{best_step}",
    }
    # keep_last 1 keeps the newest; pruning also spares the best and the checkpoint the run resumed from.
    kept = {f"step_{best_step}", "step_10", "step_20"}
    assert sorted(p.name for p in out.glob("step_*")) == sorted(kept)
    model = AutoModelForCausalLM.from_pretrained(out / "export-best", trust_remote_code=True)
    state = json.loads((out / f"step_{best_step}" / "trainer_state.json").read_text())
    assert state["metrics"]["probe/passkey"] == values[best_step]
    assert model.config.memory_slots > 0


def test_best_record_restores_only_what_applies(tmp_path):
    (tmp_path / "step_5").mkdir()
    written = BestCheckpoint(tmp_path, "val/loss")
    assert written.improved_by({"val/loss": 3.0}) and not written.improved_by({"train/loss": 1.0})
    written.record(5, {"val/loss": 3.0}, write=True)
    assert not written.improved_by({"val/loss": 3.0}) and written.improved_by({"val/loss": 2.9})
    higher = BestCheckpoint(tmp_path, "probe/passkey")
    assert higher.improved_by({"probe/passkey": 0.0})

    def restored(metric: str | None, resumed_step: int | None) -> BestCheckpoint:
        written.record(5, {"val/loss": 3.0}, write=True)
        best = BestCheckpoint(tmp_path, metric)
        best.restore(resumed_step, write=True)
        return best

    best = restored("val/loss", 10)
    assert (best.step, best.value, best.checkpoint) == (5, 3.0, tmp_path / "step_5")
    for metric, resumed_step in [("val/loss", None), ("val/loss", 4), ("probe/passkey", 10), (None, 10)]:
        best = restored(metric, resumed_step)  # fresh run, a redone future, another metric, keep_best off
        assert best.step is None and not (tmp_path / BEST_FILE).exists(), (metric, resumed_step)
    (tmp_path / "step_5").rmdir()
    assert restored("val/loss", 10).step is None  # its checkpoint is gone


def test_probe_lengths_a_passkey_cannot_fit_are_one_config_error(data_cache, tmp_path):
    proc = run_train(
        debug_args(tmp_path / "run", data_cache, "probe.every=5", "probe.lengths=[128,256]"), check=False
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "config error: probe.lengths = [128, 256] is not allowed: expected lengths above" in proc.stderr
    assert "Traceback" not in proc.stderr
