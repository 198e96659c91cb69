"""Training-side features of the model: gradient checkpointing, memory signals, parameter naming."""

import torch

from modeling.cache import CACHE_ARG

from .conftest import TINY, tiny_model


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, TINY["vocab_size"], (2, 5 * TINY["window"]))

    def grads(checkpointing):
        model = tiny_model().train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        loss = model(ids, labels=ids, use_cache=False).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters()}

    loss_plain, plain = grads(False)
    loss_ckpt, ckpt = grads(True)
    assert torch.allclose(loss_plain, loss_ckpt)
    for name in plain:
        assert torch.allclose(plain[name], ckpt[name], atol=1e-6), name


def test_memory_signals_are_reported():
    model = tiny_model()
    ids = torch.randint(0, TINY["vocab_size"], (1, 6 * TINY["window"]))
    out = model(ids, labels=ids, use_cache=False, output_memory_signals=True)
    share, gate = out.memory_signals["attn_share"], out.memory_signals["write_gate"]
    assert 0.0 < share < 1.0 and 0.0 < gate < 1.0
    assert model(ids, use_cache=False).memory_signals is None


def test_memory_parameters_are_named_for_optimizer_groups():
    names = [name for name, _ in tiny_model().named_parameters() if ".memory." in name]
    assert any(name.endswith("memory.init_keys") for name in names)
    assert all(".memory.write." in name for name in names if "init_" not in name and "read_bias" not in name)
    assert len(names) == TINY["num_hidden_layers"] * (
        3 + 5
    )  # init keys/values, read bias + 5 gated-write tensors


@torch.no_grad()
def test_decode_step_with_signals_matches_the_fused_read():
    """The decode step reads with one SDPA call, or with explicit probabilities when signals are asked for."""
    model = tiny_model()
    ids = torch.randint(0, TINY["vocab_size"], (2, 5 * TINY["window"] + 3))
    prompt, last = ids[:, :-1], ids[:, -1:]

    def step(signals):
        cache = model(prompt, use_cache=True)[CACHE_ARG]
        return model(last, cache=cache, use_cache=True, output_memory_signals=signals)

    fused, explicit = step(False), step(True)
    assert (fused.logits - explicit.logits).abs().max() < 1e-5
    assert fused.memory_signals is None and 0.0 < explicit.memory_signals["attn_share"] < 1.0
