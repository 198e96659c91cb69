"""Inference-time baselines at a fixed KV budget, on transformers' own Cache API: HF's sliding-window cache
(`sliding`), StreamingLLM attention sinks (`sink_cache`), and the prompt compressors SnapKV (`snapkv`) and
FastKV (`fastkv`), which share their scores (`window_scores`), prefill loop (`compressed_prefill`) and cache
(`prompt_cache`)."""
