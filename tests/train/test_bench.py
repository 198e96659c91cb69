"""`python -m eval bench-train` runs end to end (tiny sequence) and writes its table and JSON."""

from __future__ import annotations

import json

import pytest

from eval.tools.bench_train import main


@pytest.mark.slow
def test_bench_train_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = main(["--seq-len", "64", "--repeats", "1", "--warmup", "0", "--threads", "1", "--out", str(out)])
    table = capsys.readouterr().out
    assert table.startswith("`python -m eval bench-train --seq-len 64") and "| BCT / Llama |" in table
    saved = json.loads(out.read_text())
    assert saved["tokens_per_s_ratio"] == result["tokens_per_s_ratio"] > 0
    assert saved["peak_memory_bytes"]["bct"] > 0 and saved["peak_memory_bytes"]["llama"] > 0
