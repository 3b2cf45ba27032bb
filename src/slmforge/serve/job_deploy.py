"""Deploy a finished fine-tuning job: its base model with the job's adapter, named `ft:...`.

The deployment (serve/deployments.py) serves the base model under the deployment's name and
the adapter under the job's fine-tuned model name, so a client calls it exactly as it would
call the fine-tuned model in the cloud: `model="ft:BASE:SUFFIX:ID"`.
"""

from __future__ import annotations

from pathlib import Path

from slmforge.errors import InputError
from slmforge.serve import deployments
from slmforge.serve.store import JobStore


def deploy_job(store: JobStore, job_id: str, name: str) -> tuple[deployments.Deployment, str]:
    """Start a deployment of `job_id`'s fine-tuned model; returns it and its API key."""
    job = store.get_job(job_id)
    if job is None:
        raise InputError(f"no fine-tuning job {job_id} in {store.root}")
    if job.status != "succeeded":
        raise InputError(f"job {job_id} is {job.status}; only a succeeded job can be deployed")
    adapter = Path(job.config["out"])
    if not (adapter / "adapter_config.json").is_file():
        raise InputError(f"job {job_id}'s model folder {adapter} is missing or not an adapter")
    return deployments.create(
        name, job.config["model"], adapters=[f"{job.fine_tuned_model}={adapter}"]
    )
