"""`python -m eval <command> [options]`: every evaluation, benchmark and bench tool of the project.

Tasks (eval/tasks/; each writes <command>.json, .md and .png into --out):
  perplexity     loss by token position over long held-out windows
  passkey        passkey retrieval over lengths x needle depths
  mqar           multi-query associative recall against the number of pairs
  recall         recall accuracy by distance on the recall curriculum's held-out rows
  induction      induction-copy accuracy by id range (does a copy head work on every token?)
  speed          prefill time, decode ms/token and cache bytes against context length
  ttft           time to first token: FastKV and SnapKV against full attention and BCT prefill
  conversion     step-0 loss of a converted model against its source

Tools (eval/tools/; they train, convert or time things for the tasks):
  bench-all      every task on the bench pair, then bench-results/README.md's results section (`make bench`)
  train-pair     train the bench pair: a BCT and its same-shape full-attention twin
  to-llama       turn a full-attention BCT export into a LlamaForCausalLM folder
  export-source  write a continued-training source (e.g. SmolLM2's GGUF) as a plain HF folder
  recall-study   train small models on the recall curriculum and score recall by distance (`make recall`)
  binding-probe  steps until a plain Llama and the same-shape BCT bind keys to values at all
  retain-probe   can a `retain` BCT read recall from its memory: learned or oracle selection, trained or full read
  retain-census  what a `retain` memory holds when a passkey question comes: the key, relays of it, or other tokens
  bench-train    training tokens/s and peak memory, BCT against Llama
  bench-data     data pipeline throughput (tokenizer, packing, loader)
  plot           redraw a task's PNG from its JSON

The contenders (BCT, full attention, sliding window, sinks, SnapKV, FastKV) live in eval/contenders/.
`python -m eval <command> --help` documents each command.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "perplexity": "eval.tasks.perplexity",
    "passkey": "eval.tasks.passkey",
    "mqar": "eval.tasks.mqar",
    "recall": "eval.tasks.recall",
    "induction": "eval.tasks.induction",
    "speed": "eval.tasks.speed",
    "ttft": "eval.tasks.ttft",
    "conversion": "eval.tasks.conversion",
    "bench-all": "eval.tools.bench_all",
    "train-pair": "eval.tools.train_pair",
    "to-llama": "eval.tools.to_llama",
    "export-source": "eval.tools.export_source",
    "recall-study": "eval.tools.recall_study",
    "binding-probe": "eval.tools.binding_probe",
    "retain-probe": "eval.tools.retain_probe",
    "retain-census": "eval.tools.retain_census",
    "bench-train": "eval.tools.bench_train",
    "bench-data": "eval.tools.bench_data",
    "plot": "eval.plots",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.disable_progress_bar()
    importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
