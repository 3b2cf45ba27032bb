"""Hyperparameter search over `finetune` options (`slmforge tune`).

space.py (the search space YAML), trial.py (one trial: settings -> finetune -> objective),
study.py (the Optuna study: storage, samplers, pruners, the trial loop, dead-trial recovery),
worker.py (extra processes for --parallel), ray_backend.py (Ray Tune), report.py (best.yaml,
best adapter, trials table, plots, manifest), run.py (the command's flow).
"""
