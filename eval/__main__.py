"""`python -m eval <task> [options]`: long-context quality and speed/memory of BCT models against baselines.

Tasks: perplexity, passkey, mqar, recall, speed (each writes <task>.json, .md and .png into --out), bench-all
(all four on a trained BCT and a same-shape Llama, then the README's results section), train-pair (train that
pair), recall-study (train small models on the recall curriculum and score recall by distance: `make recall`),
to-llama (turn a full-attention BCT export into a LlamaForCausalLM folder), plot (redraw PNGs from JSON).
`python -m eval <task> --help` documents each.
"""

from __future__ import annotations

import importlib
import os
import sys

TASKS = {
    "perplexity": "eval.perplexity",
    "passkey": "eval.passkey",
    "mqar": "eval.mqar",
    "recall": "eval.recall",
    "recall-study": "eval.recall_study",
    "speed": "eval.speed",
    "bench-all": "eval.bench_all",
    "train-pair": "eval.train_pair",
    "to-llama": "eval.to_llama",
    "plot": "eval.plots",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in TASKS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.disable_progress_bar()
    importlib.import_module(TASKS[argv[0]]).main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
