"""Long-context quality and speed/memory evaluation of BCT models against baselines at equal KV budget.

`python -m eval <task>` (see `eval/__main__.py`): perplexity by position, passkey grid, MQAR, speed/memory,
bench-all. Contenders and their caches: `eval/methods.py`; baselines on the transformers Cache API:
`eval/baselines/` (sliding window, StreamingLLM sinks, FastKV). Imports modeling and data, never the reverse.
"""
