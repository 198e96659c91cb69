"""Train the pair that `bench-all` compares: a BCT and a same-shape full-attention Llama, on the same data.

    python -m eval train-pair [--out runs/bench] [--config eval/configs/bench_pair.yaml] [key=value ...]

Runs train.py twice with one config: once as configured (the BCT -> `<out>/bct/export`), once with
`model.memory_slots=0 model.window=<data.seq_len>` (a BCT whose window covers every training sequence is
exactly causal full attention -> `<out>/full/export`), then `to-llama` turns the second into
`<out>/llama`, a plain `LlamaForCausalLM`. Both runs share seed, data order, schedule and shape; the
baselines (full, sliding window, sinks, FastKV) all run on that Llama. Extra `key=value` overrides go to
both runs (e.g. `max_steps=200`). Finished runs are not retrained (train.py resumes/skips them).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

from eval.tools import to_llama

DEFAULT_CONFIG = Path(__file__).parents[1] / "configs" / "bench_pair.yaml"


def seq_len_of(config: Path, overrides: list[str]) -> int:
    for text in overrides:
        if text.startswith("data.seq_len="):
            return int(text.split("=", 1)[1])
    return int(yaml.safe_load(config.read_text())["data"]["seq_len"])


def train(config: Path, output_dir: Path, overrides: list[str]) -> Path:
    export = output_dir / "export"
    if (export / "config.json").is_file():
        print(f"{export} exists; not retraining", flush=True)
        return export
    command = [sys.executable, "train.py", "--config", str(config), f"output_dir={output_dir}", *overrides]
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return export


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(
        prog="python -m eval train-pair",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("overrides", nargs="*", help="key=value overrides for both runs")
    args = parser.parse_args(argv)
    if not Path("train.py").is_file():
        parser.error("run from the repository root (train.py not found)")
    config, out = Path(args.config), Path(args.out)
    bct = train(config, out / "bct", args.overrides)
    full_overrides = [
        *args.overrides,
        "model.memory_slots=0",
        f"model.window={seq_len_of(config, args.overrides)}",
    ]
    full = train(config, out / "full", full_overrides)
    llama = out / "llama"
    if not (llama / "config.json").is_file():
        to_llama.main([str(full), "--out", str(llama)])
    return {"bct": str(bct), "full": str(full), "llama": str(llama)}
