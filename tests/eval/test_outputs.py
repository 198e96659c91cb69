"""`python -m eval bench-all` end to end on tiny exports: every task writes its JSON (documented schema),
a Markdown table headed by the exact command, a PNG, and the README's results section is rewritten in place."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data import passkey_min_length
from eval.tools import bench_all

from .conftest import tiny_bct, tiny_llama

COMMON_KEYS = {"task", "command", "schema", "device", "reference", "methods", "settings", "rows"}
KV_BYTES = {"kv_bytes_after_prefill", "kv_bytes_after_decode", "kv_bytes_peak_prefill"}
ROW_KEYS = {
    "perplexity": {"method", "label", "bucket_start", "bucket_end", "tokens", "loss", "ppl"},
    "passkey": {"method", "label", "context", "depth", "samples", "correct", "accuracy", *KV_BYTES},
    "mqar": {"method", "label", "num_pairs", "num_queries", "seq_len", "samples", "correct", "total", "accuracy",
             *KV_BYTES},
    "speed": {"method", "label", "context", "prefill_s", "prefill_mode", "one_call_prefill_s", "ms_per_token",
              "cache_bytes", "cache_bytes_after_decode", "peak_prefill_bytes", "cache_MiB", "kv_entries"},
    "ttft": {"method", "label", "context", "ttft_s", "peak_prefill_bytes", "cache_bytes"},
}  # fmt: skip
README = (
    "# Project\n\nintro text\n\n<!-- results:begin -->\nold results\n<!-- results:end -->\n\nfooter text\n"
)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("exports")
    for name, model in (("bct", tiny_bct(len(tokenizer))), ("llama", tiny_llama(len(tokenizer)))):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


@pytest.mark.slow
def test_bench_all_writes_every_output_and_the_readme_section(exports, tmp_path, tokenizer, heldout_file):
    out, readme = tmp_path / "results", tmp_path / "README.md"
    readme.write_text(README)
    lengths = [passkey_min_length(tokenizer) + extra for extra in (30, 90)]
    argv = ["--bct", str(exports / "bct"), "--baseline", str(exports / "llama"), "--out", str(out),
            "--readme", str(readme), "--quick", "--source", heldout_file, "--validation-fraction", "0.5",
            "--cache-dir", str(tmp_path / "cache"), "--quick-passkey-lengths", *map(str, lengths),
            "--tasks", *ROW_KEYS]  # fmt: skip
    payloads = bench_all.main(argv)

    assert set(payloads) == set(ROW_KEYS)
    for task in payloads:
        on_disk = json.loads((out / f"{task}.json").read_text())
        assert set(on_disk) >= COMMON_KEYS, task
        assert on_disk["task"] == task and on_disk["schema"] == 1
        assert on_disk["command"].startswith(f"python -m eval {task} ")
        assert all(ROW_KEYS[task] <= set(row) for row in on_disk["rows"]), task
        assert all({"key", "label", "model", "kv_bytes", "kv_budget"} <= set(m) for m in on_disk["methods"])
        assert on_disk["reference"].startswith("github.com/dongwonjo/FastKV@")
        markdown = (out / f"{task}.md").read_text()
        assert markdown.startswith(f"`{on_disk['command']}`\n\n") and "|---:|" in markdown
        png = (out / f"{task}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    keys = {m["key"] for m in payloads["passkey"]["methods"]}
    assert keys == {"bct", "bct-writes-closed", "full", "sliding", "sinks", "snapkv", "fastkv"}
    assert {m["kv_budget"] for m in payloads["passkey"]["methods"] if m["key"] != "full"} == {28}
    assert len({m["kv_bytes"] for m in payloads["passkey"]["methods"] if m["key"] != "full"}) == 1
    assert {m["key"] for m in payloads["perplexity"]["methods"]} == keys

    text = readme.read_text()
    assert text.startswith("# Project\n\nintro text\n\n<!-- results:begin -->\n")
    assert text.endswith("<!-- results:end -->\n\nfooter text\n") and "old results" not in text
    for task in ROW_KEYS:
        assert f"results/{task}.png" in text and payloads[task]["command"] in text


def test_cli_lists_tasks_and_rejects_unknown_ones():
    listed = subprocess.run([sys.executable, "-m", "eval", "--help"], capture_output=True, text=True)
    assert listed.returncode == 0 and "bench-all" in listed.stdout and "perplexity" in listed.stdout
    assert subprocess.run([sys.executable, "-m", "eval", "nonsense"], capture_output=True).returncode == 2


def test_readme_without_markers_is_refused(tmp_path):
    from eval.readme import write_results_section

    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="results:begin"):
        write_results_section(readme, Path(tmp_path), [], {"bct": "a", "baseline": "b"})
    assert readme.read_text() == "# no markers\n"
