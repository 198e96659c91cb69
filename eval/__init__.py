"""Long-context quality and speed/memory evaluation of BCT models against baselines at equal KV bytes.

`python -m eval <command>` (`eval/__main__.py` lists every command). Layout: `tasks/` (what is measured),
`contenders/` (how each model is run, its cache and its byte budget), `tools/` (training, conversion and
timing tools for the bench); beside them the shared plumbing: command-line options and output files
(`common`), held-out text (`corpus`), scoring (`scoring`), tables (`report`), figures (`plots`), the results
section (`readme`) and the benchmark shape (`shapes`). Imports modeling and data, never the reverse.
"""
