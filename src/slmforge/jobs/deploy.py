"""What a finished fine-tuning job deploys as: its base model with the job's adapter, `ft:...`.

A deployment serves the base model under the deployment's name and the adapter under the
job's fine-tuned model name, so a client calls it exactly as it would call the fine-tuned model
in the cloud: `model="ft:BASE:SUFFIX:ID"`. The jobs service does not start deployments itself
(deployments belong to `serve`, a sibling layer): `slmforge jobs deploy` passes this spec to
`serve.deployments.create`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slmforge.errors import InputError
from slmforge.jobs.store import JobStore


@dataclass(frozen=True)
class JobDeployment:
    """What to serve for a succeeded job."""

    model: str  # the base model the job trained on
    adapters: list[str]  # `serve --adapter` options: the job's adapter under its ft: name
    fine_tuned_model: str


def job_deployment(store: JobStore, job_id: str) -> JobDeployment:
    """The deployment spec of `job_id`; refused unless the job succeeded and left an adapter."""
    job = store.get_job(job_id)
    if job is None:
        raise InputError(f"no fine-tuning job {job_id} in {store.root}")
    if job.status != "succeeded":
        raise InputError(f"job {job_id} is {job.status}; only a succeeded job can be deployed")
    adapter = Path(job.config["out"])
    if not (adapter / "adapter_config.json").is_file():
        raise InputError(f"job {job_id}'s model folder {adapter} is missing or not an adapter")
    return JobDeployment(
        job.config["model"], [f"{job.fine_tuned_model}={adapter}"], job.fine_tuned_model
    )
