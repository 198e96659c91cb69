"""The contenders: `methods.py` (every way a model is run, at one KV budget in bytes: `kv_bytes.py`) and
`baselines/` (inference-time baselines on transformers' Cache API: sliding window, sinks, SnapKV, FastKV)."""
