"""Train the pair that `bench-all` compares: a BCT and a same-shape full-attention Llama, on the same data.

    python -m eval train-pair [--out runs/bench] [--config eval/configs/bench_pair.yaml] [key=value ...]

Runs train.py twice with one config: once as configured (the BCT -> `<out>/bct/export`), once with
`model.memory_slots=0 model.window=<data.seq_len>` (a BCT whose window covers every training sequence is
exactly causal full attention -> `<out>/full/export`), then `to-llama` turns the second into
`<out>/llama`, a plain `LlamaForCausalLM`. Both runs share seed, data order, schedule and shape; the
baselines (full, sliding window, sinks, FastKV) all run on that Llama. Extra `key=value` overrides go to
both runs (e.g. `max_steps=200`). Finished runs are not retrained (train.py resumes/skips them).

`--warmup CONFIG` first trains CONFIG, a memory-free model (e.g. `eval/configs/induction_warmup.yaml`: the
bench shape on induction rows only) into `<out>/warmup`, turns it into `<out>/warmup/llama`, and starts both
models of the pair from it (`init_from`), so they begin with the induction head a text passkey needs and
which the bench shape does not form from text (docs/design.md §8.7). The pair's config then sets only
capacity fields (`eval/configs/bench_pair_recall.yaml`).

`--stretch LOOKBACK:SEQ_LEN:STEPS ...` (with `--warmup`) continues the warm-up in stages before the pair, each
from the last stage's Llama: STEPS more steps of the warm-up config on SEQ_LEN-token rows whose repeats look
up to LOOKBACK tokens back (`data.induction_lookback`), into `<out>/warmup-lookback<LOOKBACK>`. A head formed at
look-backs of 8-24 does not reach a passkey 500 tokens back, and one jump to long look-backs loses it
(docs/design.md §8.7); the stages grow it a step at a time while every row keeps short repeats too.

`--far CONFIG ...` then continues the twin as a BCT, stage by stage: the first CONFIG starts from `<out>/llama`
(converted with the capacity fields CONFIG sets), each later one from the stage before it, into
`<out>/far-<CONFIG's stem>`; a stage starts from its predecessor's best checkpoint (`export-best`, with
`train.keep_best`) where it has one, else from its last (`export`). The pair's `key=value` overrides do not
reach these stages: each CONFIG is a whole run. With `eval/configs/bench_pair_far_passkey.yaml` and
`eval/configs/bench_pair_far_text.yaml` this is the recipe of docs/design.md §8.11 (`make far-pair`).
`--far-from warmup` starts the first stage from the warm-up's Llama (the last `--stretch` stage's, if any)
instead, and trains no pair (§8.12: the memory is learned sooner from there).

`--far-pair` stands for the whole §8.11 recipe (`FAR_PAIR_RECIPE` below; `make far-pair`, and the models
`make bench` compares): the induction warm-up, its four stretch stages, the pair in parallel, and both far
stages. Later arguments add to it or override it (`--out`, `--far-from warmup`, `key=value`).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from eval.tools import to_llama
from training.config import CONVERSION_FIELDS

DEFAULT_CONFIG = Path(__file__).parents[1] / "configs" / "bench_pair.yaml"
# docs/design.md §8.11 end to end: the pair trained from a stretched induction warm-up, then its twin continued
# as a retain BCT on far passkeys and then on text beside them. Its models are FAR_PAIR_BCT and `<out>/llama`.
FAR_PAIR_RECIPE = (
    "--config eval/configs/bench_pair_recall.yaml --warmup eval/configs/induction_warmup.yaml "
    "--stretch 64:512:216 128:512:278 256:512:393 504:512:361 "
    "--far eval/configs/bench_pair_far_passkey.yaml eval/configs/bench_pair_far_text.yaml --parallel"
)  # ends in a flag, so that key=value arguments after it are not taken for --far configs
FAR_PAIR_BCT = "far-bench_pair_far_text/export-best"  # under --out: the last far stage's best checkpoint


def seq_len_of(config: Path, overrides: list[str]) -> int:
    for text in overrides:
        if text.startswith("data.seq_len="):
            return int(text.split("=", 1)[1])
    return int(yaml.safe_load(config.read_text())["data"]["seq_len"])


def start(config: Path, output_dir: Path, overrides: list[str]) -> subprocess.Popen | None:
    """Start train.py for one model of the pair; None when its export already exists."""
    if (output_dir / "export" / "config.json").is_file():
        print(f"{output_dir / 'export'} exists; not retraining", flush=True)
        return None
    command = [sys.executable, "train.py", "--config", str(config), f"output_dir={output_dir}", *overrides]
    print("$ " + " ".join(command), flush=True)
    return subprocess.Popen(command)


def finish(process: subprocess.Popen | None) -> None:
    if process is not None and process.wait() != 0:
        raise SystemExit(f"train-pair: {' '.join(map(str, process.args))} failed (exit {process.returncode})")


def warm_start(config: Path, output_dir: Path, overrides: list[str] | None = None) -> Path:
    """Train the memory-free warm-up run (unless its export exists) and return its plain Llama folder."""
    finish(start(config, output_dir, overrides or []))
    return as_llama(output_dir / "export", output_dir / "llama")


def parse_stage(text: str) -> tuple[int, int, int]:
    """`LOOKBACK:SEQ_LEN:STEPS` -> three positive ints (train.py checks that they fit the config)."""
    try:
        lookback, seq_len, steps = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--stretch {text!r}: expected LOOKBACK:SEQ_LEN:STEPS, e.g. 128:512:500"
        ) from None
    if min(lookback, seq_len, steps) <= 0:
        raise argparse.ArgumentTypeError(f"--stretch {text!r}: LOOKBACK, SEQ_LEN and STEPS must be positive")
    return lookback, seq_len, steps


def stretch(config: Path, out: Path, llama: Path, stages: list[tuple[int, int, int]]) -> Path:
    """Continue the warm-up stage by stage (each from the last stage's Llama); return the last Llama. Every
    stage runs `<out>/warmup-stage.yaml`, the warm-up config without its shape fields (a run with `init_from`
    takes its shape from the checkpoint), with the stage's overrides."""
    stage_config = yaml.safe_load(config.read_text())
    stage_config["model"] = {
        name: value for name, value in stage_config.get("model", {}).items() if name in CONVERSION_FIELDS
    }
    path = out / "warmup-stage.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(stage_config, sort_keys=False))
    for lookback, seq_len, steps in stages:
        overrides = [
            f"init_from={llama}",
            f"data.induction_lookback={lookback}",
            f"data.seq_len={seq_len}",
            f"model.window={seq_len}",  # still exactly causal attention over the row
            f"max_steps={steps}",
        ]
        llama = warm_start(path, out / f"warmup-lookback{lookback}", overrides)
    return llama


def far_stages(configs: list[Path], out: Path, start_from: Path) -> Path:
    """Train each far-stage config from the last stage's model (the first from `start_from`); return the last
    stage's model folder (its export-best where it kept one)."""
    for config in configs:
        output_dir = out / f"far-{config.stem}"
        finish(start(config, output_dir, [f"init_from={start_from}"]))
        best = output_dir / "export-best"
        start_from = best if (best / "config.json").is_file() else output_dir / "export"
    return start_from


def as_llama(export: Path, llama: Path) -> Path:
    """`llama`, converted from the full-attention BCT `export` unless it exists already."""
    if not (llama / "config.json").is_file():
        to_llama.main([str(export), "--out", str(llama)])
    return llama


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line; `--far-pair` is replaced by FAR_PAIR_RECIPE's arguments, in its place, so that
    arguments after it add to the recipe or override it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    while "--far-pair" in argv:
        at = argv.index("--far-pair")
        argv[at : at + 1] = shlex.split(FAR_PAIR_RECIPE)
    parser = argparse.ArgumentParser(
        prog="python -m eval train-pair",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="train both at once (on a 2-core CPU with train.cpu_threads=1: about twice as fast)",
    )
    parser.add_argument(
        "--warmup",
        metavar="CONFIG",
        help="first train this memory-free config into OUT/warmup; both models start from it (init_from)",
    )
    parser.add_argument(
        "--stretch",
        type=parse_stage,
        nargs="+",
        default=[],
        metavar="LOOKBACK:SEQ_LEN:STEPS",
        help="with --warmup: continue it in stages of longer look-back before the pair (e.g. 64:512:200); "
        "key=value overrides go before --stretch",
    )
    parser.add_argument(
        "--far",
        type=Path,
        nargs="+",
        default=[],
        metavar="CONFIG",
        help="after the pair: continue its twin as a BCT through these configs in order, each from the last "
        "stage's best export, into OUT/far-<stem> (docs/design.md §8.11)",
    )
    parser.add_argument(
        "--far-from",
        choices=("twin", "warmup"),
        default="twin",
        help="where the first --far stage starts: the pair's twin (default), or the warm-up's Llama (its last "
        "--stretch stage), which skips the pair (docs/design.md §8.12)",
    )
    parser.add_argument(  # listed for --help only: the loop above has replaced it by the recipe already
        "--far-pair",
        action="store_true",
        help=f"the whole recipe of docs/design.md §8.11 (make far-pair): {FAR_PAIR_RECIPE}",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides for both runs")
    args = parser.parse_args(argv)
    if not Path("train.py").is_file():
        parser.error("run from the repository root (train.py not found)")
    if args.stretch and not args.warmup:
        parser.error("--stretch continues the warm-up: give --warmup CONFIG too")
    if args.far_from == "warmup" and not (args.warmup and args.far):
        parser.error(
            "--far-from warmup starts the --far stages from the warm-up: give --warmup CONFIG and --far"
        )
    return args


def main(argv: list[str] | None = None) -> dict[str, str]:
    args = parse_args(argv)
    config, out = Path(args.config), Path(args.out)
    overrides = list(args.overrides)
    if args.warmup:
        warmup = Path(args.warmup)
        llama = stretch(warmup, out, warm_start(warmup, out / "warmup"), args.stretch)
        if args.far_from == "warmup":
            return {"warmup": str(llama), "far": str(far_stages(args.far, out, llama))}
        overrides.append(f"init_from={llama}")
    full_overrides = [
        *overrides,
        "model.memory_slots=0",
        f"model.window={seq_len_of(config, args.overrides)}",
    ]
    bct_run = start(config, out / "bct", overrides)
    if not args.parallel:
        finish(bct_run)
    full_run = start(config, out / "full", full_overrides)
    finish(bct_run)
    finish(full_run)
    bct, full = out / "bct" / "export", out / "full" / "export"
    llama = as_llama(full, out / "llama")
    trained = {"bct": str(bct), "full": str(full), "llama": str(llama)}
    if args.far:
        trained["far"] = str(far_stages(args.far, out, llama))
    return trained
