"""The trainer's parts, above `modeling/` and `data/` and below `train.py`: the run config, optimizer
groups, checkpoints, export and model card, Hub uploads, tracking, plots and preemption."""
