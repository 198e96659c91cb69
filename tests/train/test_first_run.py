"""What a newcomer's first runs rely on: a lone text file trains with the default validation fraction, and
every run ends with a picture of its curves (`metrics.png`) that the final lines name."""

from __future__ import annotations

from pathlib import Path

from data.sources import stdlib_files
from tests.train.runner import debug_args, run_train
from training.plots import plot_metrics
from training.tracking import read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000, (path, len(data))


def test_single_text_file_trains_with_default_validation(tmp_path, data_cache):
    text = ""
    for path in stdlib_files():  # ~200 K characters of real text in one plain file
        text += path.read_text(errors="replace") + "\n\n"
        if len(text) > 200_000:
            break
    source = tmp_path / "input.txt"
    source.write_text(text)
    run = tmp_path / "mine"
    proc = run_train(debug_args(run, data_cache, f"data.source={source}"))  # validation_fraction 0.02
    metrics = read_metrics(run / "metrics.jsonl")
    val = [m["val/loss"] for m in metrics if "val/loss" in m]
    assert len(val) == 2 and val[1] < val[0]
    assert f"curves: {run / 'metrics.png'}" in proc.stdout.splitlines()[-3:]
    check_png(run / "metrics.png")


def test_every_run_plots_its_curves(baseline, baseline_metrics, tmp_path):
    check_png(baseline / "metrics.png")
    drawn = plot_metrics(baseline_metrics, tmp_path / "again.png", title="baseline")
    logged = {name for record in baseline_metrics for name in record if name.startswith("memory/")}
    assert drawn == ["train/loss", "val/loss", *sorted(logged)]
    assert {"memory/attn_share", "memory/write_gate"} <= logged
    check_png(tmp_path / "again.png")
