"""`slmforge jobs create|list|show|events|cancel|deploy`: the OpenAI fine-tuning API from the
terminal, against `slmforge serve-jobs` or any service that speaks it (OpenAI, Azure OpenAI)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import typer

from slmforge.errors import InputError, RemoteError, RunError

jobs_app = typer.Typer(help="Fine-tuning jobs over the OpenAI API.", no_args_is_help=True)
URL_ENV, KEY_ENV = "SLMFORGE_JOBS_URL", "SLMFORGE_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8001/v1"
POLL_S = 2.0

BaseUrl = typer.Option(None, "--base-url", help=f"API URL (default: ${URL_ENV} or {DEFAULT_URL}).")
ApiKey = typer.Option(None, "--api-key", help=f"API key (default: ${KEY_ENV} or $OPENAI_API_KEY).")
AzureEndpoint = typer.Option(
    None, "--azure-endpoint", help="Azure OpenAI resource URL (https://NAME.openai.azure.com)."
)
ApiVersion = typer.Option("2025-04-01-preview", "--api-version", help="Azure OpenAI api-version.")
AsJson = typer.Option(False, "--json", help="Print the API's JSON.")


def client(
    base_url: str | None, api_key: str | None, azure_endpoint: str | None, api_version: str
) -> Any:
    import openai

    key = api_key or os.environ.get(KEY_ENV) or os.environ.get("OPENAI_API_KEY") or "none"
    if azure_endpoint:
        return openai.AzureOpenAI(
            azure_endpoint=azure_endpoint, api_key=key, api_version=api_version, max_retries=2
        )
    url = base_url or os.environ.get(URL_ENV) or DEFAULT_URL
    return openai.OpenAI(base_url=url, api_key=key, max_retries=2)


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """An API call whose failure is one line: the service's own error message."""
    import openai

    try:
        return fn(*args, **kwargs)
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        message = body.get("message") or str(exc)
        raise RemoteError(f"{exc.status_code}: {message}", exc.status_code) from None
    except openai.APIConnectionError as exc:
        raise RemoteError(f"cannot reach the fine-tuning API: {exc}") from None


def _echo(obj: Any) -> None:
    typer.echo(json.dumps(obj.model_dump(), indent=2, default=str))


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _upload(api: Any, spec: str | None) -> str | None:
    """A file id as given, or a local data file uploaded first."""
    if spec is None or spec.startswith("file-"):
        return spec
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"{spec}: not a file id (file-...) nor a local file")
    with path.open("rb") as handle:
        uploaded = _call(api.files.create, file=handle, purpose="fine-tune")
    if uploaded.status == "error":
        raise InputError(f"{spec} was refused:\n{uploaded.status_details}")
    typer.echo(f"uploaded {spec} as {uploaded.id}")
    return uploaded.id


@jobs_app.command("create")
def create(
    model: str = typer.Option(..., "--model", help="Base model: hub id, local folder, or name."),
    training_file: str = typer.Option(..., "--training-file", help="file-... id or a data file."),
    validation_file: str | None = typer.Option(None, "--validation-file", help="Id or file."),
    suffix: str | None = typer.Option(None, "--suffix", help="Part of the ft: model name."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the run."),
    n_epochs: str = typer.Option("auto", "--n-epochs", help="Passes over the data, or auto."),
    batch_size: str = typer.Option("auto", "--batch-size", help="Batch size, or auto."),
    lr_multiplier: str = typer.Option("auto", "--learning-rate-multiplier", help="Or auto."),
    method: str = typer.Option(
        "supervised",
        "--method",
        help="method.type: supervised or dpo (OpenAI's), orpo or simpo (slmforge's), or a "
        "fine-tuning method (lora, dora, qlora, full: supervised).",
    ),
    beta: str | None = typer.Option(
        None, "--beta", help="dpo/simpo: preference strength, or auto (0.1 for dpo)."
    ),
    hyper: list[str] = typer.Option(
        [],
        "--hyperparameter",
        "-H",
        help="KEY=VALUE of a slmforge option (lora_r=8, finetune_method=dora, orpo_lambda=0.2).",
    ),
    wait: bool = typer.Option(False, "--wait", help="Print events until the job ends."),
    base_url: str | None = BaseUrl,
    api_key: str | None = ApiKey,
    azure_endpoint: str | None = AzureEndpoint,
    api_version: str = ApiVersion,
) -> None:
    """Upload data (if given as files) and start a fine-tuning job."""
    api = client(base_url, api_key, azure_endpoint, api_version)
    hyperparameters: dict[str, Any] = {
        "n_epochs": _value(n_epochs),
        "batch_size": _value(batch_size),
        "learning_rate_multiplier": _value(lr_multiplier),
    }
    if beta is not None:
        hyperparameters["beta"] = _value(beta)
    for item in hyper:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--hyperparameter {item!r}: expected KEY=VALUE")
        hyperparameters[key.strip()] = _value(value)
    job = _call(
        api.fine_tuning.jobs.create,
        model=model,
        training_file=_upload(api, training_file),
        validation_file=_upload(api, validation_file),
        suffix=suffix,
        seed=seed,
        method={"type": method, method: {"hyperparameters": hyperparameters}},
    )
    typer.echo(f"created {job.id} ({job.status})")
    if wait:
        _follow(api, job.id)


def _follow(api: Any, job_id: str) -> None:
    seen: set[str] = set()
    while True:
        events = _call(api.fine_tuning.jobs.list_events, job_id, limit=100).data
        for event in reversed(events):
            if event.id not in seen:
                seen.add(event.id)
                typer.echo(
                    f"{time.strftime('%H:%M:%S', time.localtime(event.created_at))} {event.message}"
                )
        job = _call(api.fine_tuning.jobs.retrieve, job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            typer.echo(f"{job.id}: {job.status} {job.fine_tuned_model or ''}".rstrip())
            if job.status != "succeeded":
                raise RunError(
                    f"job {job_id} {job.status}: {job.error.message if job.error else ''}"
                )
            return
        time.sleep(POLL_S)


@jobs_app.command("list")
def list_(
    limit: int = typer.Option(20, "--limit", min=1, max=100),
    base_url: str | None = BaseUrl,
    api_key: str | None = ApiKey,
    azure_endpoint: str | None = AzureEndpoint,
    api_version: str = ApiVersion,
    as_json: bool = AsJson,
) -> None:
    """Recent jobs, newest first."""
    from rich.console import Console
    from rich.table import Table

    api = client(base_url, api_key, azure_endpoint, api_version)
    jobs = _call(api.fine_tuning.jobs.list, limit=limit).data
    if as_json:
        typer.echo(json.dumps([j.model_dump() for j in jobs], indent=2, default=str))
        return
    table = Table(title="fine-tuning jobs")
    for column in ("id", "status", "model", "fine-tuned model"):
        table.add_column(column)
    for job in jobs:
        table.add_row(job.id, job.status, job.model, job.fine_tuned_model or "-")
    Console().print(table)


@jobs_app.command("show")
def show(
    job_id: str = typer.Argument(help="ftjob-... id."),
    base_url: str | None = BaseUrl,
    api_key: str | None = ApiKey,
    azure_endpoint: str | None = AzureEndpoint,
    api_version: str = ApiVersion,
) -> None:
    """One job as the API returns it (JSON)."""
    _echo(
        _call(
            client(base_url, api_key, azure_endpoint, api_version).fine_tuning.jobs.retrieve, job_id
        )
    )


@jobs_app.command("events")
def events(
    job_id: str = typer.Argument(help="ftjob-... id."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until it ends."),
    base_url: str | None = BaseUrl,
    api_key: str | None = ApiKey,
    azure_endpoint: str | None = AzureEndpoint,
    api_version: str = ApiVersion,
) -> None:
    """A job's events, oldest first (loss and token accuracy per step)."""
    api = client(base_url, api_key, azure_endpoint, api_version)
    if follow:
        _follow(api, job_id)
        return
    for event in reversed(_call(api.fine_tuning.jobs.list_events, job_id, limit=100).data):
        typer.echo(f"{time.strftime('%H:%M:%S', time.localtime(event.created_at))} {event.message}")


@jobs_app.command("cancel")
def cancel(
    job_id: str = typer.Argument(help="ftjob-... id."),
    base_url: str | None = BaseUrl,
    api_key: str | None = ApiKey,
    azure_endpoint: str | None = AzureEndpoint,
    api_version: str = ApiVersion,
) -> None:
    """Cancel a queued or running job."""
    api = client(base_url, api_key, azure_endpoint, api_version)
    job = _call(api.fine_tuning.jobs.cancel, job_id)
    typer.echo(f"{job.id}: {job.status}")


@jobs_app.command("deploy")
def deploy(
    job_id: str = typer.Argument(help="A succeeded ftjob-... id of the local jobs service."),
    name: str = typer.Argument(help="Deployment name (lowercase letters, digits, '-')."),
    home: Path | None = typer.Option(
        None, "--home", help="The jobs service's --home (default: $SLMFORGE_HOME/jobs)."
    ),
) -> None:
    """Deploy a finished job's model; it answers by its ft: name (prints the key once)."""
    from slmforge.config.jobs import JobsServeConfig
    from slmforge.jobs.deploy import job_deployment
    from slmforge.jobs.server import jobs_home
    from slmforge.jobs.store import JobStore
    from slmforge.serve import deployments

    root = jobs_home(JobsServeConfig(home=home))
    if not (root / "jobs.db").is_file():
        raise InputError(f"no jobs store in {root}; pass the service's --home")
    # the CLI sits above both services, so it is where a finished job becomes a deployment
    spec = job_deployment(JobStore(root), job_id)
    deployment, key = deployments.create(name, spec.model, adapters=spec.adapters)
    typer.echo(f"deployment {deployment.name} is up at {deployment.url}")
    typer.echo(f"model: {spec.fine_tuned_model}")
    typer.echo(f"api key (shown once, store it now): {key}")


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
