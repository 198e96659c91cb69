"""Every validated BCTConfig field rejects a bad value with a message naming field, value and what is allowed."""

import pytest

from modeling import BCTConfig

from .conftest import TINY

BAD_VALUES = [
    ("vocab_size", 0, "positive integer"),
    ("hidden_size", -8, "positive integer"),
    ("intermediate_size", 2.5, "positive integer"),
    ("num_hidden_layers", 0, "positive integer"),
    ("num_attention_heads", 0, "positive integer"),
    ("num_key_value_heads", 3, "divisor of num_attention_heads"),
    ("head_dim", 7, "even"),
    ("chunk_size", 0, "positive integer"),
    ("window", 6, "multiple of chunk_size"),
    ("window", -4, ">= 0"),
    ("memory_slots", -1, ">= 0"),
    ("memory_write_rule", "lru", "one of"),
    ("memory_sink_slots", -1, "[0, memory_slots - 1 = 3]"),
    ("memory_sink_slots", 4, "at least one slot must be writable"),
    ("memory_sink_slots", 1.5, "an integer in"),
    ("memory_read_distance", -1, ">= 0"),
    ("memory_read_distance", 2.5, "an integer >= 0"),
    ("memory_gate_bias_init", float("nan"), "finite"),
    ("prefill_segment_len", 0, "positive integer"),
    ("max_position_embeddings", 0, "positive integer"),
    ("hidden_act", "swishy", "one of"),
    ("rms_norm_eps", 0.0, "> 0"),
    ("initializer_range", -0.1, ">= 0"),
    ("attention_dropout", 1.0, "[0, 1)"),
    ("qk_norm", "yes", "true or false"),
    ("tie_word_embeddings", 1, "true or false"),
    ("rope_parameters", {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}, "rope_type one of"),
]


@pytest.mark.parametrize(("field", "value", "allowed"), BAD_VALUES, ids=lambda x: str(x)[:24])
def test_bad_field_is_named(field, value, allowed):
    with pytest.raises(ValueError) as error:
        BCTConfig(**{**TINY, field: value})
    message = str(error.value)
    assert f"BCTConfig.{field}" in message
    assert repr(value)[:12] in message or str(value) in message
    assert allowed in message


def test_hidden_size_must_split_into_heads_without_head_dim():
    with pytest.raises(ValueError, match=r"BCTConfig\.hidden_size = 30 .*multiple of num_attention_heads"):
        BCTConfig(**{**TINY, "hidden_size": 30})


def test_good_config_round_trips_through_json(tmp_path):
    config = BCTConfig(**TINY)
    config.save_pretrained(tmp_path)
    loaded = BCTConfig.from_pretrained(tmp_path)
    assert loaded.kv_capacity == config.kv_capacity == 16
    assert loaded.to_diff_dict() == config.to_diff_dict()


def test_sink_slots_are_a_retain_option():
    with pytest.raises(
        ValueError, match=r"BCTConfig.memory_sink_slots = 1 .*0 with memory_write_rule = 'gated'"
    ):
        BCTConfig(**{**TINY, "memory_sink_slots": 1})
    assert BCTConfig(**{**TINY, "memory_write_rule": "retain", "memory_sink_slots": 3}).memory_sink_slots == 3
