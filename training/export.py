"""Hub-ready export: safetensors weights, config with `auto_map` + modeling code (written by the model's
`save_pretrained`), tokenizer, generation config and a model card that states the KV capacity.

Two ways in: at the end of a run from the live (possibly ZeRO-3 sharded) model, and from a `step_N/`
checkpoint with `python train.py export --checkpoint ... --out ...`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator

from modeling import BCTConfig, BCTForCausalLM
from training.checkpoint import STATE_FILE


class PushError(RuntimeError):
    """The upload failed; the local export is kept."""


def export_from_accelerator(
    accelerator: Accelerator,
    model: torch.nn.Module,
    tokenizer: Any,
    out_dir: str | Path,
    run_config: dict[str, Any],
    metrics: dict[str, float],
    sample: str | None,
) -> Path:
    """Collective. Under ZeRO-3 `get_state_dict` gathers the shards (needs
    `stage3_gather_16bit_weights_on_model_save: true`); only the main process writes."""
    out = Path(out_dir)
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    # ZeRO-2 hands back tied weights as separate copies; under ZeRO-3 only the main process gets weights.
    if state_dict is not None and unwrapped.config.tie_word_embeddings:
        for tied in getattr(unwrapped, "all_tied_weights_keys", {}):
            state_dict.pop(tied, None)
    set_generation_tokens(unwrapped, tokenizer)
    unwrapped.save_pretrained(
        out,
        is_main_process=accelerator.is_main_process,
        save_function=accelerator.save,
        state_dict=state_dict,
    )
    if accelerator.is_main_process:
        tokenizer.save_pretrained(out)
        write_model_card(out, unwrapped.config, _count_params(state_dict), run_config, metrics, sample)
    accelerator.wait_for_everyone()
    return out


def load_checkpoint_model(step_dir: str | Path) -> tuple[torch.nn.Module, Any]:
    """Rebuild the model from a `step_N/` folder (plain or DeepSpeed ZeRO state) on CPU, in float32."""
    from transformers import AutoTokenizer

    step_dir = Path(step_dir)
    model = BCTForCausalLM(BCTConfig.from_pretrained(step_dir / "model"))
    if (step_dir / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state_dict = load_file(step_dir / "model.safetensors")
    else:  # DeepSpeed: accelerate saves the engine under the tag "pytorch_model"
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state_dict = get_fp32_state_dict_from_zero_checkpoint(str(step_dir), tag="pytorch_model")
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    tied = set(model.all_tied_weights_keys) if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(
            f"{step_dir}: checkpoint does not match the model (missing {missing}, unexpected {unexpected})"
        )
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(step_dir / "tokenizer")
    return model.eval(), tokenizer


def export_checkpoint(step_dir: str | Path, out_dir: str | Path) -> Path:
    """`train.py export`: one process, no accelerator."""
    step_dir, out = Path(step_dir), Path(out_dir)
    model, tokenizer = load_checkpoint_model(step_dir)
    run_config = yaml.safe_load((step_dir / "config.yaml").read_text())
    metrics = json.loads((step_dir / STATE_FILE).read_text()).get("metrics", {})
    export = run_config["export"]
    sample = generate_sample(
        model, tokenizer, export["sample_prompt"], export["max_new_tokens"], run_config["seed"]
    )
    set_generation_tokens(model, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_model_card(out, model.config, _count_params(model.state_dict()), run_config, metrics, sample)
    return out


def set_generation_tokens(model: torch.nn.Module, tokenizer: Any) -> None:
    gen = model.generation_config
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )


@torch.no_grad()
def generate_sample(
    model: torch.nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int, seed: int = 0
) -> str | None:
    """A sampled continuation (top-k 50, temperature 0.8, fixed seed). Under ZeRO-3 every rank must call it."""
    if max_new_tokens == 0:
        return None
    device = next(model.parameters()).device
    inputs = tokenizer(prompt, return_tensors="pt").to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    ids = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=True, top_k=50, temperature=0.8, pad_token_id=pad
    )
    model.train(was_training)
    return tokenizer.decode(ids[0], skip_special_tokens=True)


def write_model_card(
    out: Path,
    config: Any,
    num_params: int,
    run_config: dict[str, Any],
    metrics: dict[str, float],
    sample: str | None,
) -> None:
    title = Path(run_config["output_dir"]).name
    location = run_config.get("push_to_hub") or str(out)  # the Hub repo, or this folder
    cap = config.kv_capacity
    fp32 = config.kv_cache_bytes(batch_size=1, dtype=torch.float32)
    bf16 = config.kv_cache_bytes(batch_size=1, dtype=torch.bfloat16)
    metric_rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in metrics.items()) or "| (none) | |"
    sample_block = (
        f"\nA sampled continuation of `{run_config['export']['sample_prompt']!r}`:\n\n```\n{sample}\n```\n"
        if sample
        else ""
    )
    card = f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [bct, bounded-cache-transformer, custom_code]
---

# {title}: a Bounded-Cache Transformer

A decoder-only language model whose attention reads and writes a learned, fixed-capacity KV memory.
{num_params:,} parameters ({num_params / 1e6:.1f} M), {config.num_hidden_layers} layers, hidden size
{config.hidden_size}, {config.num_attention_heads} attention heads / {config.num_key_value_heads} KV heads.

## KV cache capacity

Every layer holds exactly **{cap} key/value entries per KV head** at any context length:
{config.memory_slots} memory slots + a window of {config.window} tokens + one chunk of {config.chunk_size}.

| dtype | KV cache bytes per sequence (all layers, keys and values) |
|---|---|
| float32 | {fp32:,} |
| bfloat16 | {bf16:,} |

## Load it

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{location}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{location}", trust_remote_code=True)
ids = tokenizer("def ", return_tensors="pt")
print(tokenizer.decode(model.generate(**ids, max_new_tokens=32)[0]))
```

`trust_remote_code=True` runs the modeling code shipped in this folder (it imports only torch and transformers).

## Final metrics

| metric | value |
|---|---|
{metric_rows}
{sample_block}
## Training config

```yaml
{yaml.safe_dump(run_config, sort_keys=False).rstrip()}
```
"""
    (out / "README.md").write_text(card)


def upload(folder: str | Path, repo_id: str, is_main_process: bool = True) -> int:
    """`push_to_hub` for the command line: prints the outcome, returns the exit status (1 on failure)."""
    if not is_main_process:
        return 0
    try:
        print(f"uploaded: {push_to_hub(folder, repo_id)}")
    except PushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def push_to_hub(folder: str | Path, repo_id: str) -> str:
    """Upload an export folder. Raises PushError (offline, no token, network) and leaves the folder as it is."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    hint = f"the export is kept at {folder}; upload it later with `hf upload {repo_id} {folder}`"
    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        return str(
            api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload BCT export")
        )
    except OfflineModeIsEnabled as err:
        raise PushError(f"push_to_hub={repo_id!r}: the Hub is offline (HF_HUB_OFFLINE=1); {hint}") from err
    except (HfHubHTTPError, OSError) as err:
        raise PushError(
            f"push_to_hub={repo_id!r}: upload failed ({type(err).__name__}: {err}); {hint}"
        ) from err


def _count_params(state_dict: dict[str, torch.Tensor]) -> int:
    seen: dict[int, int] = {}
    for tensor in state_dict.values():  # tied weights are one tensor: count them once
        seen[tensor.data_ptr()] = tensor.numel()
    return sum(seen.values())
