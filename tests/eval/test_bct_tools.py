"""The writes-closed switch, the full-attention BCT -> Llama conversion and the source export."""

import pytest
import torch

from eval.contenders.methods import LoadedModel, build_methods, close_writes, make_method
from eval.tools.to_llama import bct_to_llama

from .conftest import tiny_bct


def memory_state(method, ids):
    cache = method.new_cache()
    for _ in method.stream(ids, cache):
        pass
    return [(layer.mem_keys.clone(), layer.mem_values.clone()) for layer in cache.layers]


def test_writes_closed_keeps_the_initial_memory_on_a_copy(bct):
    ids = torch.randint(0, 300, (1, 120), generator=torch.Generator().manual_seed(0))
    closed = make_method(bct, "bct-writes-closed", None, segment=50)
    opened = make_method(bct, "bct", None, segment=50)
    assert closed.model is not bct.model and opened.model is bct.model
    assert all(
        layer.self_attn.memory.writes_open for layer in bct.model.model.layers
    )  # the user's is untouched
    for layer, (keys, values) in zip(closed.model.model.layers, memory_state(closed, ids)):
        initial = layer.self_attn.memory
        assert torch.equal(keys[0], initial.init_keys) and torch.equal(values[0], initial.init_values)
    for layer, (keys, _) in zip(bct.model.model.layers, memory_state(opened, ids)):
        assert not torch.allclose(keys[0], layer.self_attn.memory.init_keys)  # open writes do change it


def test_two_exports_of_the_same_name_get_labels_that_tell_them_apart(bct):
    """Two runs' `export/` folders: each label carries the shortest path tail that differs."""
    first, second = (LoadedModel(f"runs/{run}/export", bct.model, None) for run in ("long", "short"))
    labels = [m.label for m in build_methods([first, second], [], writes_closed=True, kv_bytes=None)]
    assert labels == [
        "BCT (long/export)",
        "BCT, writes closed (long/export)",
        "BCT (short/export)",
        "BCT, writes closed (short/export)",
    ]


def test_writes_closed_needs_a_bct(llama):
    with pytest.raises(ValueError, match="BCT models only"):
        close_writes(llama.model)


def test_full_attention_bct_converts_to_an_equivalent_llama(tokenizer):
    bct = tiny_bct(len(tokenizer), memory_slots=0, window=64)
    llama = bct_to_llama(bct)  # checks logits itself on window + 1 tokens
    ids = torch.randint(0, 300, (1, 60))
    with torch.no_grad():
        torch.testing.assert_close(llama(ids).logits, bct(ids).logits, atol=1e-4, rtol=1e-4)
    assert type(llama).__name__ == "LlamaForCausalLM"


def test_conversion_refuses_a_bct_with_memory(bct):
    with pytest.raises(ValueError, match="memory_slots = 0"):
        bct_to_llama(bct.model)


@pytest.mark.slow
@torch.no_grad()
def test_export_source_writes_the_gguf_model_as_a_plain_folder(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval.tools import export_source
    from modeling.convert import load_source
    from training.init_source import resolve_source

    export_source.main(["--init-from", "smollm2", "--out", str(tmp_path / "source")])
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "source").eval()
    assert plain.config.model_type == "llama" and getattr(plain.config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "source")
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    path, gguf = resolve_source("smollm2")
    expected = load_source(path, gguf).generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(plain.generate(ids, max_new_tokens=8, do_sample=False), expected)
