"""The fine-tuning jobs service: the OpenAI fine-tuning API served locally (`slmforge serve-jobs`).

api.py (files, jobs, events, checkpoints, the /ui dashboard), spec.py (a job request -> a
`FinetuneConfig`, `ft:` names, total steps as the trainer counts them), store.py (SQLite WAL
store + content-addressed blobs), worker.py (the supervisor thread and one training process per
job), server.py (bind, recover, serve), deploy.py (what a succeeded job deploys as).
"""
