"""The run config: a dataclass tree loaded from YAML, with dotted `key=value` overrides, validated before
anything heavy starts (no model, no data, no process group).

    output_dir, max_steps, seed, resume (auto | none | path), init_from, push_to_hub (a Hub repo id)
    hub:      HubConfig (private, revision, strategy: what is pushed to push_to_hub, and when)
    model:    config (configs/model/<size>.json) and/or inline BCTConfig fields; capacity fields
              memory_slots / window / chunk_size override the JSON (or the converted checkpoint's defaults)
    data:     data.DataConfig
    optim:    OptimConfig      train: TrainConfig      tracking: TrackingConfig      export: ExportConfig
    probe:    ProbeConfig (a held-out passkey probe during training; train.keep_best can keep its best step)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import Field, model_validator

from data import DataConfig
from data.schema import (
    Bool,
    ConfigError,
    Int,
    Number,
    Section,
    Str,
    allowed,
    not_allowed,
    refusal,
    unknown_key,
    unknown_key_message,
)
from modeling import BCTConfig
from training.init_source import SMOLLM2_ALIASES, resolve_source

# BCT fields that make sense on top of a converted checkpoint (the rest of the architecture is the source's).
CAPACITY_FIELDS = ("memory_slots", "window", "chunk_size")
CONVERSION_FIELDS = (
    *CAPACITY_FIELDS,
    "memory_write_rule",
    "memory_sink_slots",
    "memory_read_distance",
    "memory_gate_bias_init",
    "prefill_segment_len",
)
# Keys of a config.json written by save_pretrained that are not BCTConfig fields.
_HF_BOOKKEEPING = ("model_type", "architectures", "auto_map", "transformers_version", "dtype", "torch_dtype")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_BRANCH = re.compile(r"^[A-Za-z0-9_.][\w./-]*(?<![/.])$")

AtLeastOne = Annotated[Int, allowed(lambda v: v >= 1, "an integer >= 1")]
NotNegative = Annotated[Int, allowed(lambda v: v >= 0, "an integer >= 0")]
ZeroIsOff = Annotated[Int, allowed(lambda v: v >= 0, "an integer >= 0 (0 = off)")]


class ModelConfig(Section):
    """`config`: a JSON file of BCTConfig fields. Any BCTConfig field may also be given inline here (kept in
    `fields`; BCTConfig checks their values when the model config is built)."""

    model_config = {**Section.model_config, "extra": "allow"}
    prefix: ClassVar[str] = "model"

    config: Str | None = None
    memory_slots: Int | None = None
    window: Int | None = None
    chunk_size: Int | None = None

    @classmethod
    def open_keys(cls) -> list[str]:
        names = [n for n in BCTConfig.__annotations__ if not n.startswith("_")]
        return sorted(set(names) - set(CAPACITY_FIELDS) | {"rope_theta"})

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = [*cls.model_fields, *cls.open_keys()]
            for key in data:
                if key not in known:
                    raise unknown_key(key, known)
        return data

    @property
    def fields(self) -> dict[str, Any]:
        """The inline BCTConfig fields."""
        return dict(self.model_extra or {})


class OptimConfig(Section):
    prefix: ClassVar[str] = "optim"

    lr: Annotated[Number, allowed(lambda v: v >= 0, "a learning rate >= 0")] = 3e-4
    # Learning-rate multiplier for the memory write/gate parameters (`.memory.write.`): gates barely move
    # at the base rate (docs/design.md §7).
    memory_lr_multiplier: Annotated[Number, allowed(lambda v: v >= 0, "a number >= 0")] = 10.0
    weight_decay: Annotated[Number, allowed(lambda v: v >= 0, "a number >= 0")] = 0.1
    betas: Annotated[
        tuple[Number, Number], allowed(lambda v: all(0 <= b < 1 for b in v), "two numbers in [0, 1)")
    ] = (0.9, 0.95)
    eps: Annotated[Number, allowed(lambda v: v > 0, "a number > 0")] = 1e-8
    warmup_steps: NotNegative = 100
    # cosine decays to lr * min_lr_ratio at max_steps
    min_lr_ratio: Annotated[Number, allowed(lambda v: 0 <= v <= 1, "a number in [0, 1]")] = 0.1
    # max global grad norm; 0 = no clipping
    grad_clip: Annotated[Number, allowed(lambda v: v >= 0, "a number >= 0 (0 = no clipping)")] = 1.0


class TrainConfig(Section):
    prefix: ClassVar[str] = "train"

    micro_batch_size: AtLeastOne = 8  # sequences per process per forward
    grad_accum: AtLeastOne = 1  # global batch = micro_batch_size * grad_accum * num_processes
    eval_every: ZeroIsOff = 500  # 0 = only at the end
    eval_batches: ZeroIsOff = 20  # validation batches of micro_batch_size x num_processes sequences
    save_every: ZeroIsOff = 1000  # 0 = only at the end (and on preemption)
    keep_last: AtLeastOne = 3
    log_every: AtLeastOne = 10
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"  # auto: bf16 on a GPU that has it, else fp32
    gradient_checkpointing: Bool = False
    compile: Bool = False
    # torch.set_num_threads for CPU work; null = torch's default (one per core). On a busy machine, threads
    # beyond the free cores wait on each other at every op: measured 8x slower steps with 2 threads on 2
    # busy cores than with 1.
    cpu_threads: Annotated[
        Int | None, allowed(lambda v: v is None or v >= 1, "an integer >= 1, or null (torch's default)")
    ] = None
    # Updates with a non-finite loss or gradient norm skipped (gradients dropped) before the run stops;
    # 0 = stop at the first one. Counted across resumes (docs/training.md, "Nothing is lost").
    max_nonfinite_skips: NotNegative = 0
    # Keep the checkpoint with the best value of this metric (lowest val/loss, highest probe/passkey): it is
    # saved when the metric improves, never pruned, recorded in output_dir/best.json and exported to
    # output_dir/export-best at the end (transformers.Trainer's metric_for_best_model). null = off.
    keep_best: Literal["val/loss", "probe/passkey"] | None = None


class ProbeConfig(Section):
    """A passkey probe during training (training/probe.py): every `every` steps, exact-match accuracy on
    held-out passkeys of these lengths and needle depths, filled with validation text, through the training
    model's parallel forward; a BCT with memory slots is also probed with its writes closed (the control)."""

    prefix: ClassVar[str] = "probe"

    every: ZeroIsOff = 0  # steps between probes (also after the last step); 0 = no probe
    lengths: Annotated[
        list[Int],
        allowed(
            lambda v: len(v) > 0 and len(set(v)) == len(v) and all(n >= 1 for n in v),
            "a non-empty list of distinct token counts >= 1",
        ),
    ] = Field(default_factory=lambda: [4096, 8192])
    depths: Annotated[
        list[Number],
        allowed(
            lambda v: len(v) > 0 and all(0 <= d <= 1 for d in v), "a non-empty list of fractions in [0, 1]"
        ),
    ] = Field(default_factory=lambda: [0.0, 0.5])
    samples: AtLeastOne = 8  # examples per (length, depth)
    # Not a seed the passkey evaluations use (0 by default, 1 by depth): a checkpoint picked on the probe is
    # reported on other examples.
    seed: NotNegative = 7
    writes_closed: Bool = True


class TrackingConfig(Section):
    prefix: ClassVar[str] = "tracking"

    report_to: list[Literal["wandb", "tensorboard"]] | Literal["wandb", "tensorboard", "none"] = "none"
    project: Str | None = None  # default: $WANDB_PROJECT, else "bct"
    run_name: Str | None = None  # default: the output_dir's name

    @property
    def trackers(self) -> list[str]:
        if isinstance(self.report_to, str):
            return [] if self.report_to == "none" else [self.report_to]
        return list(self.report_to)


class ExportConfig(Section):
    prefix: ClassVar[str] = "export"

    sample_prompt: Str = "def "
    max_new_tokens: NotNegative = 64  # 0 = no sample
    # How the end-of-run sample is drawn (`generate(do_sample=True, ...)` from a fixed seed); never greedy,
    # which loops on a small model.
    temperature: Annotated[Number, allowed(lambda v: v > 0, "a number > 0")] = 0.8
    top_k: ZeroIsOff = 50
    top_p: Annotated[Number, allowed(lambda v: 0 < v <= 1, "a number in (0, 1] (1 = off)")] = 1.0


SAMPLING_FIELDS = ("temperature", "top_k", "top_p")


def sample_settings(export: dict[str, Any]) -> dict[str, Any]:
    """The sampling settings of a saved `export:` section; a run saved before they existed gets the defaults."""
    defaults = ExportConfig()
    return {name: export.get(name, getattr(defaults, name)) for name in SAMPLING_FIELDS}


class HubConfig(Section):
    """Where and when `push_to_hub` uploads, in the manner of transformers.Trainer's `hub_strategy`:
    `end` the final export only; `every_save` also a Hub-ready export of each checkpoint as it is saved;
    `checkpoint` like every_save, and the checkpoint itself (resumable state) into `last-checkpoint/`.
    Uploads run in a background thread; a failed one is reported at the end and never fails the run."""

    prefix: ClassVar[str] = "hub"

    private: Bool = False  # a new repo is created private (an existing repo keeps its visibility)
    revision: Str | None = None  # branch to push to (created from main if missing); null = main
    strategy: Literal["end", "every_save", "checkpoint"] = "end"


class RunConfig(Section):
    output_dir: Str = "runs/default"
    max_steps: AtLeastOne = 1000
    seed: NotNegative = 0
    # auto: the newest complete checkpoint in output_dir, if any | none | a step_N path
    resume: Str | None = "auto"
    # Resume even though the model or data settings differ from the checkpoint's (the differences are printed).
    resume_allow_changes: Bool = False
    init_from: Str | None = None  # HF folder | hub id | file.gguf | alias (SMOLLM2_ALIASES)
    push_to_hub: Str | None = None  # Hub repo id (`name` or `namespace/name`) to upload exports to
    hub: HubConfig = Field(default_factory=HubConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)

    @property
    def resume_mode(self) -> str:
        return "none" if self.resume in (None, "none") else self.resume

    @model_validator(mode="after")
    def _probe_has_what_it_needs(self) -> RunConfig:
        if self.train.keep_best == "probe/passkey" and self.probe.every == 0:
            raise not_allowed("train.keep_best", "probe/passkey", "'probe/passkey' only with probe.every > 0")
        if self.probe.every > 0 and self.data.validation_fraction == 0:
            raise not_allowed(
                "probe.every",
                self.probe.every,
                "0 when data.validation_fraction is 0 (the probe's filler is validation text)",
            )
        return self

    @model_validator(mode="after")
    def _hub_needs_a_repo(self) -> RunConfig:
        if self.push_to_hub is None:
            for name, shown in (("strategy", "'end'"), ("private", "false"), ("revision", "null")):
                value = getattr(self.hub, name)
                if value != HubConfig.model_fields[name].default:
                    raise not_allowed(f"hub.{name}", value, f"{shown} unless push_to_hub names a repo")
        return self


def load_run_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """YAML file (optional) + `key=value` overrides -> validated RunConfig. Raises ConfigError."""
    tree: dict[str, Any] = {}
    if path is not None:
        tree = read_yaml(path, "--config")
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(tree, keys, value)
    cfg = RunConfig.parse(tree)
    validate(cfg)
    return cfg


def read_yaml(path: str | Path, name: str) -> dict[str, Any]:
    """A YAML mapping from a file, or a ConfigError naming the file (`name` is the flag or field given it)."""
    if not Path(path).is_file():
        raise ConfigError(f"{name} {str(path)!r}: no such file")
    try:
        tree = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(err, "problem", None) or "not valid YAML"
        raise ConfigError(f"{name} {str(path)!r}: not valid YAML{line}: {problem}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{name} {str(path)!r}: cannot be read ({err})") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{name} {str(path)!r}: expected a YAML mapping at the top level")
    return tree


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value); the value is read as YAML (`3`, `true`, `[a, b]`, `null`)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected key=value, e.g. max_steps=20 or model.window=64")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set `tree[k0][k1]...[kn] = value`, creating sections; key names are checked by the schema."""
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(
                f"override {'.'.join(keys)}: {'.'.join(keys[: i + 1])} is a value, not a section"
            )
        node = child
    node[keys[-1]] = value


def config_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain data (lists, not tuples) of a run config: what is saved as config.yaml and logged."""
    return cfg.model_dump(mode="json")


def save_run_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_dict(cfg), sort_keys=False))


def flat_config(cfg: RunConfig) -> dict[str, Any]:
    """`{"optim.lr": 3e-4, ...}` with lists as strings: what trackers (TensorBoard hparams) accept."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk("", config_dict(cfg))
    return out


def resolve_init_source(init_from: str) -> tuple[str, str | None]:
    """`init_from` -> (folder or hub id, gguf file name inside it or None); see `training.init_source`."""
    try:
        return resolve_source(init_from)
    except FileNotFoundError as err:
        raise ConfigError(f"init_from = {init_from!r}: {err}") from None


def model_config_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """BCTConfig kwargs for a model trained from scratch: JSON file, then inline fields, then capacity."""
    kwargs: dict[str, Any] = {}
    if cfg.model.config:
        kwargs.update(_read_model_json(cfg.model.config))
    kwargs.update(_inline_model_fields(cfg))
    kwargs.setdefault("vocab_size", cfg.data.vocab_size)
    return kwargs


def _inline_model_fields(cfg: RunConfig) -> dict[str, Any]:
    """The BCTConfig fields the run's `model:` section sets itself (capacity fields only when set)."""
    fields = dict(cfg.model.fields)
    fields.update({k: getattr(cfg.model, k) for k in CAPACITY_FIELDS if getattr(cfg.model, k) is not None})
    return fields


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
    """The checks the schema cannot make (files, checkpoints, the model the fields describe), all without a
    model, data or process group. Raises ConfigError on the first problem."""
    if cfg.push_to_hub is not None:
        check_hub_target(cfg.push_to_hub, cfg.hub.revision)
    _validate_output_dir(cfg.output_dir)
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
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from err


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


def _validate_output_dir(output_dir: str) -> None:
    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output_dir = {output_dir!r} is a file: expected a folder (created if missing)")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"output_dir = {output_dir!r} is not writable ({existing} belongs to someone else or is read-only): "
            "choose a folder you can write to"
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
    checkpoint = bct_checkpoint_fields(cfg.init_from)
    if checkpoint is not None:
        return _continued_bct_config(cfg, checkpoint)
    return _build_config(conversion_kwargs(cfg))


def bct_checkpoint_fields(init_from: str, local_files_only: bool = True) -> dict[str, Any] | None:
    """The config.json fields of `init_from` when it is a BCT checkpoint (model_type "bct", e.g. an earlier
    run's export), else None. A BCT checkpoint is continued as it is, not converted. `local_files_only`: a
    Hub id is looked up in the Hub cache only (validation makes no network calls)."""
    from transformers import PretrainedConfig

    folder, gguf_file = resolve_init_source(init_from)
    if gguf_file is not None:
        return None
    try:
        fields, _ = PretrainedConfig.get_config_dict(
            str(Path(folder).expanduser()), local_files_only=local_files_only
        )
    except (OSError, ValueError):
        return None  # no config.json there (yet): a source to convert, or an error reported elsewhere
    return fields if fields.get("model_type") == BCTConfig.model_type else None


def _continued_bct_config(cfg: RunConfig, checkpoint: dict[str, Any]) -> BCTConfig:
    """A BCT checkpoint's capacity and memory rules are trained into its weights: the run may restate them,
    not change them."""
    for name, value in _inline_model_fields(cfg).items():
        _require(
            value == checkpoint.get(name),
            f"model.{name}",
            value,
            f"{checkpoint.get(name)!r} or unset: init_from {cfg.init_from!r} is a BCT checkpoint, continued "
            "with the capacity and memory rules trained into its weights",
        )
    return _build_config({k: v for k, v in checkpoint.items() if k not in _HF_BOOKKEEPING})


def _validate_init_from(init_from: str) -> None:
    folder, gguf_file = resolve_init_source(init_from)
    if gguf_file is not None:
        _require((Path(folder) / gguf_file).is_file(), "init_from", init_from, "an existing .gguf file")
        return
    if Path(folder).expanduser().exists():
        config_file = Path(folder).expanduser() / "config.json"
        _require(
            config_file.is_file(),
            "init_from",
            init_from,
            "a folder holding a Hugging Face causal LM (config.json + weights)",
        )
        try:
            fields = json.loads(config_file.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"init_from = {init_from!r}: {config_file} is not valid JSON ({err})") from None
        _require(
            isinstance(fields, dict) and "model_type" in fields,
            "init_from",
            init_from,
            f"a Hugging Face model folder, but {config_file} names no model_type",
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


def _require(ok: bool, where: str, value: Any, allowed_text: str) -> None:
    if not ok:
        raise refusal(where, value, allowed_text)
