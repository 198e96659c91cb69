"""Inference-time baselines at a fixed KV budget, on transformers' own Cache API: HF's sliding-window cache
(`sliding`), StreamingLLM attention sinks (`sink_cache`) and FastKV (`fastkv`)."""
