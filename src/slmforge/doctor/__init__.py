"""`slmforge doctor`: what this machine can do, what is missing (with the command that fixes
it), and whether a model fits for fine-tuning, merge, optimize and inference.

facts.py gathers machine facts lazily; system.py and packages.py register the checks;
fit.py estimates every stage's memory from a model's config (inference.py: chat, serve and
eval with the ONNX model) and fit_checks.py turns them into findings; run.py runs them all
into a `Report`.
"""

from slmforge.doctor.run import diagnose

__all__ = ["diagnose"]
