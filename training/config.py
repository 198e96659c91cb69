"""The run config: a dataclass tree loaded from YAML, with dotted `key=value` overrides, validated before
anything heavy starts (no model, no data, no process group).

    output_dir, max_steps, seed, resume (auto | none | path), init_from, push_to_hub (a Hub repo id)
    hub:      HubConfig (private, revision, strategy: what is pushed to push_to_hub, and when)
    model:    config (configs/model/<size>.json) and/or inline BCTConfig fields; capacity fields
              memory_slots / window / chunk_size override the JSON (or the converted checkpoint's defaults)
    data:     data.DataConfig
    optim:    OptimConfig      train: TrainConfig      tracking: TrackingConfig      export: ExportConfig
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from data import DataConfig
from modeling import BCTConfig
from modeling.convert import SMOLLM2_ALIASES, resolve_source
from training.schema import (
    ConfigError,
    apply_override,
    from_dict,
    parse_override,
    to_dict,
    unknown_key_message,
)

# BCT fields that make sense on top of a converted checkpoint (the rest of the architecture is the source's).
CAPACITY_FIELDS = ("memory_slots", "window", "chunk_size")
CONVERSION_FIELDS = (*CAPACITY_FIELDS, "memory_write_rule", "memory_gate_bias_init", "prefill_segment_len")
# Keys of a config.json written by save_pretrained that are not BCTConfig fields.
_HF_BOOKKEEPING = ("model_type", "architectures", "auto_map", "transformers_version", "dtype", "torch_dtype")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_BRANCH = re.compile(r"^[A-Za-z0-9_.][\w./-]*(?<![/.])$")


@dataclass
class ModelConfig:
    """`config`: a JSON file of BCTConfig fields. Any BCTConfig field may also be given inline here."""

    open_field: ClassVar[str] = "fields"

    config: str | None = None
    memory_slots: int | None = None
    window: int | None = None
    chunk_size: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open_keys(cls) -> list[str]:
        names = [n for n in BCTConfig.__annotations__ if not n.startswith("_")]
        return sorted(set(names) - set(CAPACITY_FIELDS) | {"rope_theta"})


@dataclass
class OptimConfig:
    lr: float = 3e-4
    # Learning-rate multiplier for the memory write/gate parameters (`.memory.write.`): gates barely move
    # at the base rate (docs/design.md §7).
    memory_lr_multiplier: float = 10.0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping


@dataclass
class TrainConfig:
    micro_batch_size: int = 8  # sequences per process per forward
    grad_accum: int = 1  # global batch = micro_batch_size * grad_accum * num_processes
    eval_every: int = 500  # 0 = only at the end
    eval_batches: int = 20  # validation batches of micro_batch_size x num_processes sequences
    save_every: int = 1000  # 0 = only at the end (and on preemption)
    keep_last: int = 3
    log_every: int = 10
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"  # auto: bf16 on a GPU that has it, else fp32
    gradient_checkpointing: bool = False
    compile: bool = False
    # torch.set_num_threads for CPU work; null = torch's default (one per core). On a busy machine, threads
    # beyond the free cores wait on each other at every op: measured 8x slower steps with 2 threads on 2
    # busy cores than with 1.
    cpu_threads: int | None = None


@dataclass
class TrackingConfig:
    report_to: list[Literal["wandb", "tensorboard"]] | Literal["wandb", "tensorboard", "none"] = "none"
    project: str | None = None  # default: $WANDB_PROJECT, else "bct"
    run_name: str | None = None  # default: the output_dir's name

    @property
    def trackers(self) -> list[str]:
        if isinstance(self.report_to, str):
            return [] if self.report_to == "none" else [self.report_to]
        return list(self.report_to)


@dataclass
class ExportConfig:
    sample_prompt: str = "def "
    max_new_tokens: int = 64  # 0 = no sample
    # How the end-of-run sample is drawn (`generate(do_sample=True, ...)` from a fixed seed); never greedy,
    # which loops on a small model.
    temperature: float = 0.8
    top_k: int = 50  # 0 = off
    top_p: float = 1.0  # 1 = off


SAMPLING_FIELDS = ("temperature", "top_k", "top_p")


def sample_settings(export: dict[str, Any]) -> dict[str, Any]:
    """The sampling settings of a saved `export:` section; a run saved before they existed gets the defaults."""
    return {name: export.get(name, getattr(ExportConfig, name)) for name in SAMPLING_FIELDS}


@dataclass
class HubConfig:
    """Where and when `push_to_hub` uploads, in the manner of transformers.Trainer's `hub_strategy`:
    `end` the final export only; `every_save` also a Hub-ready export of each checkpoint as it is saved;
    `checkpoint` like every_save, and the checkpoint itself (resumable state) into `last-checkpoint/`.
    Uploads run in a background thread; a failed one is reported at the end and never fails the run."""

    private: bool = False  # a new repo is created private (an existing repo keeps its visibility)
    revision: str | None = None  # branch to push to (created from main if missing); null = main
    strategy: Literal["end", "every_save", "checkpoint"] = "end"


@dataclass
class RunConfig:
    output_dir: str = "runs/default"
    max_steps: int = 1000
    seed: int = 0
    # auto: the newest complete checkpoint in output_dir, if any | none | a step_N path
    resume: str | None = "auto"
    init_from: str | None = None  # HF folder | hub id | file.gguf | alias (SMOLLM2_ALIASES)
    push_to_hub: str | None = None  # Hub repo id (`name` or `namespace/name`) to upload exports to
    hub: HubConfig = field(default_factory=HubConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    @property
    def resume_mode(self) -> str:
        return "none" if self.resume in (None, "none") else self.resume


def load_run_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """YAML file (optional) + `key=value` overrides -> validated RunConfig. Raises ConfigError."""
    tree: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"--config {str(path)!r}: no such file")
        tree = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"--config {str(path)!r}: expected a YAML mapping at the top level")
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(tree, keys, value)
    cfg = from_dict(RunConfig, tree)
    validate(cfg)
    return cfg


def save_run_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def flat_config(cfg: RunConfig) -> dict[str, Any]:
    """`{"optim.lr": 3e-4, ...}` with lists as strings: what trackers (TensorBoard hparams) accept."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk("", to_dict(cfg))
    return out


def resolve_init_source(init_from: str) -> tuple[str, str | None]:
    """`init_from` -> (folder or hub id, gguf file name inside it or None); see `modeling.convert.resolve_source`."""
    try:
        return resolve_source(init_from)
    except FileNotFoundError as err:
        raise ConfigError(f"init_from = {init_from!r}: {err}") from None


def model_config_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """BCTConfig kwargs for a model trained from scratch: JSON file, then inline fields, then capacity."""
    kwargs: dict[str, Any] = {}
    if cfg.model.config:
        kwargs.update(_read_model_json(cfg.model.config))
    kwargs.update(cfg.model.fields)
    kwargs.update({k: getattr(cfg.model, k) for k in CAPACITY_FIELDS if getattr(cfg.model, k) is not None})
    kwargs.setdefault("vocab_size", cfg.data.vocab_size)
    return kwargs


def _read_model_json(path: str) -> dict[str, Any]:
    try:
        fields = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"model.config = {path!r}: not valid JSON ({err})") from err
    allowed = [*ModelConfig.open_keys(), *CAPACITY_FIELDS, *_HF_BOOKKEEPING]
    for key in fields:
        if key not in allowed:
            raise ConfigError(f"{path}: " + unknown_key_message(f"model.{key}", key, sorted(allowed)))
    return {k: v for k, v in fields.items() if k not in _HF_BOOKKEEPING}


def conversion_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """BCT fields applied on top of an `init_from` checkpoint (capacity: BCTConfig's defaults if unset)."""
    kwargs = dict(cfg.model.fields)
    for name in CAPACITY_FIELDS:
        value = getattr(cfg.model, name)
        kwargs[name] = getattr(BCTConfig, name) if value is None else value
    return kwargs


def validate(cfg: RunConfig) -> None:
    """Every check that needs no model, data or process group. Raises ConfigError on the first problem."""
    _require(cfg.max_steps >= 1, "max_steps", cfg.max_steps, "an integer >= 1")
    _require(cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    o, t = cfg.optim, cfg.train
    _require(o.lr >= 0, "optim.lr", o.lr, "a learning rate >= 0")
    _require(
        o.memory_lr_multiplier >= 0, "optim.memory_lr_multiplier", o.memory_lr_multiplier, "a number >= 0"
    )
    _require(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "a number >= 0")
    _require(all(0 <= b < 1 for b in o.betas), "optim.betas", list(o.betas), "two numbers in [0, 1)")
    _require(o.eps > 0, "optim.eps", o.eps, "a number > 0")
    _require(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, "an integer >= 0")
    _require(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", o.min_lr_ratio, "a number in [0, 1]")
    _require(o.grad_clip >= 0, "optim.grad_clip", o.grad_clip, "a number >= 0 (0 = no clipping)")
    for name in ("micro_batch_size", "grad_accum", "keep_last", "log_every"):
        _require(getattr(t, name) >= 1, f"train.{name}", getattr(t, name), "an integer >= 1")
    for name in ("eval_every", "eval_batches", "save_every"):
        _require(getattr(t, name) >= 0, f"train.{name}", getattr(t, name), "an integer >= 0 (0 = off)")
    _require(
        t.cpu_threads is None or t.cpu_threads >= 1,
        "train.cpu_threads",
        t.cpu_threads,
        "an integer >= 1, or null (torch's default)",
    )
    e = cfg.export
    _require(e.max_new_tokens >= 0, "export.max_new_tokens", e.max_new_tokens, "an integer >= 0")
    _require(e.temperature > 0, "export.temperature", e.temperature, "a number > 0")
    _require(e.top_k >= 0, "export.top_k", e.top_k, "an integer >= 0 (0 = off)")
    _require(0 < e.top_p <= 1, "export.top_p", e.top_p, "a number in (0, 1] (1 = off)")
    _validate_hub(cfg)
    _validate_resume(cfg)
    model_config = _validate_model(cfg)
    _require(
        cfg.data.seq_len % model_config.chunk_size == 0,
        "data.seq_len",
        cfg.data.seq_len,
        f"a multiple of model.chunk_size={model_config.chunk_size} (the memory is written a chunk at a time)",
    )
    vocab_size = model_config.vocab_size if cfg.init_from is None else None
    try:
        cfg.data.validate(chunk_size=model_config.chunk_size, model_vocab_size=vocab_size)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from err


def _validate_hub(cfg: RunConfig) -> None:
    if cfg.push_to_hub is None:
        for name, default, shown in (
            ("strategy", "end", "'end'"),
            ("private", False, "false"),
            ("revision", None, "null"),
        ):
            value = getattr(cfg.hub, name)
            _require(value == default, f"hub.{name}", value, f"{shown} unless push_to_hub names a repo")
        return
    check_hub_target(cfg.push_to_hub, cfg.hub.revision)


def check_hub_target(
    repo_id: str, revision: str | None, names: tuple[str, str] = ("push_to_hub", "hub.revision")
) -> None:
    """A Hub repo id and branch that the Hub would accept; `names` are the fields named in the error."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
        valid = _HUB_ID.match(repo_id) is not None
    except HFValidationError:
        valid = False
    _require(valid, names[0], repo_id, "a Hub repo id, `name` or `namespace/name`")
    _require(
        revision is None or (_BRANCH.match(revision) is not None and ".." not in revision),
        names[1],
        revision,
        "null (main) or a branch name of letters, digits and . _ - / (not starting with - or /)",
    )


def _validate_resume(cfg: RunConfig) -> None:
    mode = cfg.resume_mode
    if mode == "none" and any(Path(cfg.output_dir).glob("step_*/trainer_state.json")):
        raise ConfigError(
            f"resume = 'none' but output_dir {cfg.output_dir!r} already holds checkpoints: "
            "set resume=auto to continue them, or choose another output_dir"
        )
    if mode in ("auto", "none"):
        return
    if not (Path(mode) / "trainer_state.json").is_file():
        raise ConfigError(
            f"resume = {mode!r}: not a complete checkpoint folder (no trainer_state.json); "
            "allowed: auto, none, or a step_N folder written by train.py"
        )


def _validate_model(cfg: RunConfig) -> BCTConfig:
    """Check the model section; return the BCTConfig it describes (defaults for a converted checkpoint's
    architecture: only its capacity fields matter here)."""
    if cfg.model.config is not None and not Path(cfg.model.config).is_file():
        raise ConfigError(
            f"model.config = {cfg.model.config!r}: no such file (expected configs/model/<size>.json)"
        )
    if cfg.init_from is None:
        return _build_config(model_config_kwargs(cfg))
    _validate_init_from(cfg.init_from)
    if cfg.model.config is not None:
        raise ConfigError(
            f"model.config = {cfg.model.config!r}: not used with init_from (the architecture comes from the "
            f"checkpoint); set only {', '.join(CONVERSION_FIELDS)}"
        )
    for name in cfg.model.fields:
        _require(
            name in CONVERSION_FIELDS,
            f"model.{name}",
            cfg.model.fields[name],
            f"with init_from, only {', '.join(CONVERSION_FIELDS)}",
        )
    return _build_config(conversion_kwargs(cfg))


def _validate_init_from(init_from: str) -> None:
    folder, gguf_file = resolve_init_source(init_from)
    if gguf_file is not None:
        _require((Path(folder) / gguf_file).is_file(), "init_from", init_from, "an existing .gguf file")
        return
    if Path(folder).expanduser().exists():
        _require(
            (Path(folder).expanduser() / "config.json").is_file(),
            "init_from",
            init_from,
            "a folder holding a Hugging Face causal LM (config.json + weights)",
        )
        return
    looks_like_path = folder.startswith(("/", ".", "~")) or folder.count("/") > 1 or not _HUB_ID.match(folder)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if looks_like_path or (offline and not _hub_cached(folder)):
        where = "no such file or folder" + (", and no cached Hub model (HF_HUB_OFFLINE=1)" if offline else "")
        raise ConfigError(
            f"init_from = {init_from!r}: {where}. Allowed: a local HF model folder, a hub id, a .gguf file, "
            f"or one of the aliases {list(SMOLLM2_ALIASES)}."
        )


def _hub_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _build_config(kwargs: dict[str, Any]) -> BCTConfig:
    try:
        return BCTConfig(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err).replace("BCTConfig.", "model.")) from err


def _require(ok: bool, where: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{where} = {value!r} is not allowed: expected {allowed}.")
