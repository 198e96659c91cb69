"""The evaluation tasks, one module each, each run as `python -m eval <task>` and writing <task>.json/.md/.png:
perplexity by position, passkey, MQAR, recall by distance, speed/memory, time to first token, and the step-0
quality of a conversion."""
