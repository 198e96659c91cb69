"""Hub-ready export: safetensors weights, config with `auto_map` + modeling code (written by the model's
`save_pretrained`), tokenizer, generation config and a model card (training/card.py).

Two ways in: from the live (possibly ZeRO-3 sharded) model at the end of a run or at a save pushed to the
Hub, and from a `step_N/` checkpoint with `python train.py export RUN`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator

from modeling import BCTConfig, BCTForCausalLM
from training.card import portable_command, write_model_card
from training.checkpoint import STATE_FILE, is_complete, list_checkpoints, weights_a_save_may_drop
from training.config import sample_settings


def export_from_accelerator(
    accelerator: Accelerator,
    model: torch.nn.Module,
    tokenizer: Any,
    out_dir: str | Path,
    run_config: dict[str, Any],
    metrics: dict[str, float],
    sample: str | None,
    step: int,
) -> Path:
    """Collective. Under ZeRO-3 `get_state_dict` gathers the shards (needs
    `stage3_gather_16bit_weights_on_model_save: true`); only the main process writes. The card names the
    run's `push_to_hub` repo (and `hub.revision`) as where to load it from."""
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
        write_model_card(
            out,
            unwrapped.config,
            run_config,
            metrics=metrics,
            sample=sample,
            step=step,
            command=portable_command(run_config["output_dir"]),
            repo_id=run_config.get("push_to_hub"),
            revision=run_config.get("hub", {}).get("revision"),
        )
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
    if set(missing) - weights_a_save_may_drop(model) or unexpected:
        raise RuntimeError(
            f"{step_dir}: checkpoint does not match the model (missing {missing}, unexpected {unexpected})"
        )
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(step_dir / "tokenizer")
    return model.eval(), tokenizer


def checkpoint_to_export(source: str | Path, out: str | Path | None = None) -> tuple[Path, Path]:
    """`train.py export SOURCE`: (step_N folder, export folder). SOURCE is a step_N folder or a run folder
    (its newest complete checkpoint). The export goes to `run/export` for a run's newest checkpoint, to
    `run/export-step_N` for an older one, unless `out` is given."""
    source = Path(source)
    if is_complete(source):
        step_dir = source
    else:
        found = list_checkpoints(source)
        if not found:
            raise FileNotFoundError(f"{source}: neither a step_N checkpoint nor a run folder holding one")
        step_dir = found[-1]
    newest = list_checkpoints(step_dir.parent)[-1:] == [step_dir]
    default = step_dir.parent / ("export" if newest else f"export-{step_dir.name}")
    out = Path(out) if out is not None else default
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {str(out)!r} is a file: give a folder (it is created if missing)")
    return step_dir, out


def export_checkpoint(
    step_dir: str | Path, out_dir: str | Path, repo_id: str | None = None, revision: str | None = None
) -> Path:
    """`train.py export`: one process, no accelerator. `repo_id`/`revision`: where the card says to load
    it from (else the run's own `push_to_hub`, else this folder)."""
    step_dir, out = Path(step_dir), Path(out_dir)
    model, tokenizer = load_checkpoint_model(step_dir)
    run_config = yaml.safe_load((step_dir / "config.yaml").read_text())
    state = json.loads((step_dir / STATE_FILE).read_text())
    export = run_config["export"]
    sample = generate_sample(
        model,
        tokenizer,
        export["sample_prompt"],
        export["max_new_tokens"],
        run_config["seed"],
        **sample_settings(export),
    )
    set_generation_tokens(model, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_model_card(
        out,
        model.config,
        run_config,
        metrics=state.get("metrics", {}),
        sample=sample,
        step=state["step"],
        command=state.get("command"),  # recorded portable when the checkpoint was saved
        repo_id=repo_id or run_config.get("push_to_hub"),
        revision=revision if repo_id else run_config.get("hub", {}).get("revision"),
    )
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
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int,
    seed: int = 0,
    temperature: float = 0.8,
    top_k: int = 50,
    top_p: float = 1.0,
) -> str | None:
    """A sampled continuation from a fixed seed (`export.temperature/top_k/top_p`). Under ZeRO-3 every rank
    must call it."""
    if max_new_tokens == 0:
        return None
    device = next(model.parameters()).device
    inputs = tokenizer(prompt, return_tensors="pt").to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    ids = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        pad_token_id=pad,
    )
    model.train(was_training)
    return tokenizer.decode(ids[0], skip_special_tokens=True)
