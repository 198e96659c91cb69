"""The model card of an export, built with `huggingface_hub.ModelCard` / `ModelCardData`.

Metadata: license, `base_model` (continued runs from a Hub model), datasets (a name, never a path),
language, and the run's own evaluation as `model-index` (validation loss and perplexity of the final eval;
recall/passkey figures only when the run logged them). Body: parameters, KV capacity in entries and
bytes, intended use and limitations, the metrics, a sample and the training command.

No absolute path of the training machine reaches the card: the command is recorded portable
(`portable_command`) and every name is a basename or a Hub id.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from modeling import BCTForCausalLM
from training.config import bct_checkpoint_fields, sample_settings
from training.init_source import SMOLLM2_ALIASES

REPO = Path(__file__).resolve().parents[1]
PROJECT_LICENSE = "apache-2.0"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the packaged GGUF was quantised from
SMOLLM2_LICENSE = "apache-2.0"  # the license on its Hub card
# Built-in corpora (data.DataConfig.source) -> dataset name and languages.
KNOWN_SOURCES = {"stdlib": ("python-stdlib", ["code", "en"]), "shakespeare": ("shakespeare", ["en"])}
# Logged metrics that go into model-index besides val/loss and val/ppl (only when the run computed them).
RECALL_PREFIXES = ("recall/", "passkey/", "mqar/")
# An absolute path inside a command line: at its start or after `=`, `:`, `,`, `[` or a space.
_ABSOLUTE = re.compile(r"(^|[=:,\[\s])((?:~|/)[^\s,\[\]]*)")


def count_parameters(config: Any) -> int:
    """`num_parameters()` of the model `config` describes, built on the meta device: the same number
    whether the live weights are tied, sharded by ZeRO-3 or gathered (no memory is allocated)."""
    with torch.device("meta"):
        return BCTForCausalLM(config).num_parameters()


def portable_command(output_dir: str | Path, argv: list[str] | None = None) -> str:
    """The command that started this process, without machine paths: a path under the repository becomes
    relative to it, one under an outside `output_dir` relative to the output folder's parent (`run/step_10`),
    any other absolute path its basename. The launcher is `python`, or `accelerate launch` with its process
    count and DeepSpeed config or stage (read from the environment accelerate sets; the name of an
    accelerate config file is not in it)."""
    argv = sys.argv if argv is None else argv
    launcher = ["python"]
    if "ACCELERATE_MIXED_PRECISION" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        launcher = ["accelerate", "launch", "--num_processes", os.environ.get("WORLD_SIZE", "1")]
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
            launcher.append("--use_deepspeed")
            if "ACCELERATE_DEEPSPEED_CONFIG_FILE" in os.environ:  # the stage is inside that JSON
                json_file = scrub_paths(os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"], output_dir)
                launcher += ["--deepspeed_config_file", json_file]
            elif "ACCELERATE_DEEPSPEED_ZERO_STAGE" in os.environ:
                launcher += ["--zero_stage", os.environ["ACCELERATE_DEEPSPEED_ZERO_STAGE"]]
    script = Path(argv[0]).name if argv else "train.py"
    return " ".join([*launcher, script, *(shlex.quote(scrub_paths(a, output_dir)) for a in argv[1:])])


def scrub_paths(text: str, output_dir: str | Path) -> str:
    out = Path(output_dir).expanduser().resolve()

    def portable(match: re.Match) -> str:
        path = Path(match.group(2)).expanduser().resolve()
        for root, prefix in ((REPO, Path()), (out, Path(out.name))):
            if path == root or root in path.parents:
                return match.group(1) + str(prefix / path.relative_to(root))
        return match.group(1) + path.name

    return _ABSOLUTE.sub(portable, text)


def dataset_name(source: str) -> str:
    """`data.source` as a name: a built-in corpus's name, an `hf:` Hub id, else a file or folder's basename."""
    if source in KNOWN_SOURCES:
        return KNOWN_SOURCES[source][0]
    name = source.removeprefix("hf:")
    path = Path(name).expanduser()
    if source.startswith("hf:") and not path.exists() and not name.startswith(("/", ".", "~")):
        return name  # a Hub dataset id such as HuggingFaceFW/fineweb-edu
    while any(c in path.name for c in "*?["):  # a glob: name the folder it searches
        path = path.parent
    return path.name or name


def base_model_info(init_from: str | None, source_architecture: str | None) -> dict[str, Any]:
    """What a continued run started from: its Hub id (None for a local folder or file), a description that
    names the source architecture (or says it is a BCT checkpoint, continued as it is), and its license when
    known (the SmolLM2 alias; a license in the cached or local model card)."""
    if init_from is None:
        return {"hub_id": None, "description": None, "license": None, "is_bct": False}
    if bct_checkpoint_fields(init_from) is None:
        info = _base_model_info(init_from, source_architecture or "unknown architecture")
        return {**info, "is_bct": False}
    info = _base_model_info(init_from, "BCT")
    if source_architecture:
        info["description"] += f" (converted from {source_architecture})"
    return {**info, "is_bct": True}


def _base_model_info(init_from: str, architecture: str) -> dict[str, Any]:
    if init_from in SMOLLM2_ALIASES:
        return {
            "hub_id": SMOLLM2_HUB_ID,
            "description": f"{SMOLLM2_HUB_ID} ({architecture}; its packaged GGUF)",
            "license": {"license": SMOLLM2_LICENSE},
        }
    path = Path(init_from).expanduser()
    if init_from.endswith(".gguf") or path.exists() or init_from.startswith(("/", ".", "~")):
        card = path / "README.md" if path.is_dir() else None
        return {
            "hub_id": None,
            "description": f"a local {architecture} checkpoint `{_short_name(path)}`",
            "license": _card_license(card),
        }
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(init_from, "README.md")
    except ValueError:  # not a valid repo id after all
        cached = None
    license_ = _card_license(Path(cached)) if isinstance(cached, str) else None
    return {"hub_id": init_from, "description": f"{init_from} ({architecture})", "license": license_}


def _short_name(path: Path) -> str:
    """A checkpoint folder's name, with its run's when it is a run's `export/` (`run/export`)."""
    return f"{path.parent.name}/{path.name}" if path.name == "export" else path.name


def build_model_card(
    config: Any,
    run_config: dict[str, Any],
    metrics: dict[str, float],
    sample: str | None,
    *,
    step: int,
    command: str | None,
    folder_name: str,
    repo_id: str | None = None,
    revision: str | None = None,
) -> ModelCard:
    title = Path(run_config["output_dir"]).name
    data = run_config["data"]
    dataset = dataset_name(data["source"])
    languages = KNOWN_SOURCES.get(data["source"], (None, None))[1]
    base = base_model_info(run_config.get("init_from"), config.source_architecture)
    if base["description"] is None:
        license_fields = {"license": PROJECT_LICENSE}
    else:  # the weights derive from the base model: its license, or say that it is not known here
        license_fields = base["license"] or {"license": "other", "license_name": "same-as-base-model"}
    card_data = ModelCardData(
        model_name=title,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["bct", "bounded-cache-transformer", "kv-cache", "custom_code"],
        base_model=base["hub_id"],
        datasets=[dataset],
        language=languages,
        metrics=["loss", "perplexity"],
        eval_results=_eval_results(metrics, dataset) or None,
        **license_fields,
    )
    body = _body(config, run_config, metrics, sample, step, command, folder_name, repo_id, revision, base)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


def write_model_card(out: str | Path, config: Any, run_config: dict[str, Any], **kwargs: Any) -> ModelCard:
    """`build_model_card` saved as `out/README.md` (keyword arguments as there, `folder_name` from `out`)."""
    card = build_model_card(config, run_config, folder_name=Path(out).name, **kwargs)
    card.save(Path(out) / "README.md")
    return card


def _eval_results(metrics: dict[str, float], dataset: str) -> list[EvalResult]:
    named = {"val/loss": ("loss", "Validation loss (nats/token)"), "val/ppl": ("perplexity", "Perplexity")}
    named |= {k: ("accuracy", k) for k in metrics if k.startswith(RECALL_PREFIXES)}
    return [
        EvalResult(
            task_type="text-generation",
            dataset_type=dataset,
            dataset_name=f"{dataset} (held-out split)",
            dataset_split="validation",
            metric_type=metric_type,
            metric_name=name,
            metric_value=round(float(metrics[key]), 4),
        )
        for key, (metric_type, name) in named.items()
        if key in metrics
    ]


def _body(
    config: Any,
    run_config: dict[str, Any],
    metrics: dict[str, float],
    sample: str | None,
    step: int,
    command: str | None,
    folder_name: str,
    repo_id: str | None,
    revision: str | None,
    base: dict[str, Any],
) -> str:
    title = Path(run_config["output_dir"]).name
    params = count_parameters(config)
    cap, layers = config.kv_capacity, config.num_hidden_layers
    fp32 = config.kv_cache_bytes(batch_size=1, dtype=torch.float32)
    bf16 = config.kv_cache_bytes(batch_size=1, dtype=torch.bfloat16)
    reach = layers * (config.window + config.chunk_size)
    sink_slots = config.memory_sink_slots
    sinks = f" ({sink_slots} of them are learned sinks that are never written)" if sink_slots else ""
    flags = config.has_live_flags
    live_flags = " Each slot also has a one-byte live flag (an empty slot is not read)." if flags else ""
    live_column = ", live flags" if flags else ""
    data = run_config["data"]
    tied = (
        "tied input/output embeddings" if config.tie_word_embeddings else "separate input/output embeddings"
    )
    origin = "trained from scratch"
    license_line = "Apache-2.0, like the code that trained it."
    if base["description"]:
        converted = "" if base["is_bct"] else ", converted to a BCT"
        origin = f"continued from {base['description']}{converted} and trained further"
        license_line = (
            "the weights derive from the base model, whose license this export could not read: check it "
        )
        license_line += "before use. The modeling code is Apache-2.0."
        if base["license"]:
            known = base["license"].get("license_name") or base["license"]["license"]
            license_line = (
                f"the base model's license ({known}) applies to these weights; the modeling code is "
            )
            license_line += "Apache-2.0."
    location = repo_id or folder_name
    load_args = f'"{location}"' + (f', revision="{revision}"' if revision and repo_id else "")
    tokens = metrics.get("train/tokens")
    seen = f" ({int(tokens):,} tokens)" if tokens else ""
    synthetic = (
        f", {data['synthetic_fraction']:.0%} of rows replaced by synthetic recall tasks "
        f"({', '.join(data['synthetic_tasks'])})"
        if data.get("synthetic_fraction")
        else ""
    )
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in metrics.items()) or "| (none) | |"
    sampling = ", ".join(f"{k} {v:g}" for k, v in sample_settings(run_config["export"]).items())
    sample_block = (
        f"\nA sampled continuation of {run_config['export']['sample_prompt']!r} ({sampling}):"
        f"\n\n```\n{sample}\n```\n"
        if sample
        else ""
    )
    command_block = f"```bash\n{command}\n```" if command else "(not recorded in this checkpoint)"
    return f"""# {title}: a Bounded-Cache Transformer

A decoder-only language model whose attention reads and writes a learned, fixed-capacity KV memory,
{origin}. **{params:,} parameters** ({params / 1e6:.2f} M, {tied}), {layers} layers, hidden size
{config.hidden_size}, {config.num_attention_heads} attention heads / {config.num_key_value_heads} KV heads.

## KV cache capacity

Every layer holds exactly **{cap} key/value entries per KV head** at any context length:
{config.memory_slots} memory slots + a window of {config.window} tokens + one chunk of {config.chunk_size}.{live_flags}

| dtype | KV cache bytes per sequence (all layers, keys and values{live_column}) |
|---|---|
| float32 | {fp32:,} |
| bfloat16 | {bf16:,} |

## Load it

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained({load_args}, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained({load_args}, trust_remote_code=True)
ids = tokenizer({run_config["export"]["sample_prompt"]!r}, return_tensors="pt")
print(tokenizer.decode(model.generate(**ids, max_new_tokens=32)[0]))
```

`trust_remote_code=True` runs the modeling code shipped with the weights (it imports only torch and
transformers).

## Intended use and limitations

A research model for studying language models with a bounded cache: memory and decode cost per token stay
constant at any context length. It is not instruction-tuned or safety-tuned, and not meant for
applications.

- **What is exact:** the last {config.window}–{config.window + config.chunk_size} tokens at every layer (the
  window and the current chunk). Stacked, {layers} layers reach about {reach:,} tokens back.
- **What the memory does:** tokens that leave the window are written, {config.chunk_size} at a time, into
  {config.memory_slots} slots by the learned `{config.memory_write_rule}` write rule{sinks};
  every query reads slots and window in one softmax.
- **What the memory recalls is trained, not given:** in the project's measurements a 4-layer model (1,500
  steps, 3.1 M tokens, half synthetic recall rows) did not use its writes (closing them changed held-out loss
  by 0.002 nats), while SmolLM2-135M continued 120 steps on a mix with recall rows recalled 77-81% of
  key-value answers ~900 tokens back (0% with writes closed on the same weights), and with 60 more steps on
  4,096-token rows 38% of passkeys 4,000-6,000 tokens back, beyond the windows' stacked reach, but almost
  none past twice the length of the rows it was trained on.
  Unless the evaluation results below include recall figures for this model, assume it does not recall exact
  facts from beyond its window: past that it may keep a lossy summary, not the text.

## Evaluation

The final evaluation of the run (validation split of the training data) and the last logged metrics, at
step {step}:

| metric | value |
|---|---|
{rows}
{sample_block}
## Training

{step} steps{seen} on `{dataset_name(data["source"])}`, sequences of {data["seq_len"]} tokens{synthetic}.
License: {license_line}

{command_block}
"""


def _card_license(path: Path | None) -> dict[str, str] | None:
    """The license fields of a model card file (license, and license_name/license_link for `other`)."""
    if path is None or not path.is_file():
        return None
    try:
        data = ModelCard.load(path, ignore_metadata_errors=True).data
    except (ValueError, OSError):
        return None
    fields = {k: getattr(data, k, None) for k in ("license", "license_name", "license_link")}
    return {k: v for k, v in fields.items() if v} if fields["license"] else None
