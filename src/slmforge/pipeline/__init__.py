"""`slmforge run`: a workflow YAML -> a validated stage graph -> cached, resumable runs.

workflow.py reads the file (overrides, `${stage.output}` references, validation through the
stage config models), stages.py names the stage kinds, graph.py orders the stages and computes
cache keys and the plan, runner.py executes it, record.py keeps `runs/<id>/run.json`, and
clean.py deletes exactly what a run created.
"""
