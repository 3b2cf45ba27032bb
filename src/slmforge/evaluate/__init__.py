"""The eval stage: a data set through one or more targets, scored, judged and reported.

`dataset` reads eval rows (prompt, reference, context), `metrics` is the registry of reference
metrics (`overlap` implements SQuAD F1, GLEU and METEOR), `judge` runs the LLM-as-judge
evaluators from versioned prompt files, `runner` drives a run (with `partial` for resume),
`stats` and `summary` aggregate with bootstrap intervals, paired tests and gates, and `report`
(with `charts`) writes report.md and a self-contained report.html.
"""
