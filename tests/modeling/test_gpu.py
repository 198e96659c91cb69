"""The CUDA paths: the same function as on CPU, one function across parallel / chunked / decode on the GPU,
and a decode loop whose cache memory does not grow. Marked `gpu`: skipped with a reason without CUDA."""

import pytest
import torch

from modeling import BCTCache
from modeling.configuration_bct import WRITE_RULES

from .conftest import TINY, tiny_model
from .test_equivalence import LENGTH, TOL, prefill_in_segments

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


@pytest.mark.parametrize("rule", WRITE_RULES)
@torch.no_grad()
def test_cuda_forward_equals_cpu(rule):
    model = tiny_model(memory_write_rule=rule)
    ids = torch.randint(0, TINY["vocab_size"], (2, LENGTH))
    on_cpu = model(ids, use_cache=False).logits
    on_gpu = model.to(CUDA)(ids.to(CUDA), use_cache=False).logits.cpu()
    assert (on_gpu - on_cpu).abs().max() <= TOL


@pytest.mark.parametrize("rule", WRITE_RULES)
@torch.no_grad()
def test_cuda_parallel_chunked_and_decode_agree(rule):
    model = tiny_model(memory_write_rule=rule).to(CUDA)
    ids = torch.randint(0, TINY["vocab_size"], (2, LENGTH), device=CUDA)
    parallel = model(ids, use_cache=False).logits
    chunked, _ = prefill_in_segments(model, ids, 3 * TINY["chunk_size"] + 5)
    decoded, _ = prefill_in_segments(model, ids, 1)
    assert (chunked - parallel).abs().max() <= TOL and (decoded - parallel).abs().max() <= TOL


@torch.no_grad()
def test_cuda_decode_memory_stays_flat():
    model = tiny_model().to(CUDA)
    cache = BCTCache(model.config)
    token = torch.zeros(1, 1, dtype=torch.long, device=CUDA)
    allocated = []
    for step in range(40 * TINY["window"]):
        model(token, cache=cache, use_cache=True)
        if step in (10 * TINY["window"], 40 * TINY["window"] - 1):
            torch.cuda.synchronize()
            allocated.append(torch.cuda.memory_allocated())
    assert cache.nbytes() == model.config.kv_cache_bytes(batch_size=1)
    assert allocated[1] == allocated[0]
