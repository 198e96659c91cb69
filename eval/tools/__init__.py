"""Tools that train, convert or time things for the tasks, each run as `python -m eval <command>`: the bench
pair and its Llama conversion, `bench-all`, the recall study, and the training and data-pipeline benchmarks."""
