"""`slmforge serve --backend ray`: the same app as a Ray Serve deployment with N replicas.

Each replica builds the whole FastAPI app (model, keys, filter, metrics) itself, through
`serve.ingress` with a builder function, so nothing heavy is pickled from the driver. Ray's HTTP
proxy puts the replicas behind one endpoint on `--host`/`--port`; with `--min-replicas` and
`--max-replicas` Ray Serve adds and removes replicas with the number of requests in flight.
`--ray-address` joins an existing cluster (several machines) instead of starting a local one.
"""

from __future__ import annotations

import os
import time
from typing import Any

from slmforge.config import parse_adapter_options
from slmforge.config.serve import ServeConfig
from slmforge.errors import InputError, RunError
from slmforge.progress import info

APP_NAME = "slmforge"
TARGET_ONGOING_REQUESTS = 2  # autoscaling: requests in flight per replica before scaling up


def replica_app_builder(config_json: str) -> Any:
    """A function Ray calls on each replica to build that replica's app."""

    def build() -> Any:
        from slmforge.http.auth import ApiKeys
        from slmforge.serve.app import create_app
        from slmforge.serve.models import load_served

        config = ServeConfig.model_validate_json(config_json)
        served = load_served(
            config.model,
            parse_adapter_options(config.adapter),
            config.engine,
            config.served_model_name,
            config.allow_pickle,
            config.device,
            config.max_concurrency,
            config.prefix_cache_mib,
        )
        keys = ApiKeys.from_options(config.api_key, config.api_keys_file)
        app = create_app(config, keys, served)
        app.state.slmforge.guard.replica = f"{os.uname().nodename}:{os.getpid()}"
        return app

    return build


def deployment_options(config: ServeConfig) -> dict[str, Any]:
    options: dict[str, Any] = {
        "name": APP_NAME,
        "ray_actor_options": {"num_cpus": config.replica_cpus, "num_gpus": config.replica_gpus},
        "max_ongoing_requests": config.max_concurrency + config.max_queue,
    }
    if config.min_replicas is not None:
        options["autoscaling_config"] = {
            "min_replicas": config.min_replicas,
            "max_replicas": config.max_replicas,
            "target_ongoing_requests": TARGET_ONGOING_REQUESTS,
        }
    else:
        options["num_replicas"] = config.replicas
    return options


def run_ray(config: ServeConfig) -> None:
    """Start (or join) Ray, deploy the replicas, and block until interrupted."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise InputError("--backend ray needs Ray Serve: pip install 'ray[serve]'") from None
    from slmforge.serve.models import resolve_engine

    resolve_engine(config.model, config.engine, parse_adapter_options(config.adapter))
    if config.safety is not None:  # a bad policy fails here, not in every replica
        from slmforge.safety.filter import SafetyFilter

        SafetyFilter.from_file(config.safety)
        config = config.model_copy(update={"safety": config.safety.resolve()})
    try:
        ray.init(
            address=config.ray_address,
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
        )
    except (ConnectionError, OSError, RuntimeError, ValueError) as exc:
        where = config.ray_address or "a local Ray instance"
        raise RunError(f"cannot start or reach {where}: {exc}") from None
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        build = replica_app_builder(config.model_dump_json())
        deployment = serve.deployment(serve.ingress(build)(), **deployment_options(config))
        info(f"starting Ray Serve replicas on http://{config.host}:{config.port}/v1")
        serve.run(deployment.bind(), name=APP_NAME, route_prefix="/", blocking=False)
        running = _wait_for_replicas(serve, config.min_replicas or config.replicas)
        info(f"serving on http://{config.host}:{config.port}/v1 with {running} Ray Serve replicas")
        while True:
            _check_running(serve)
            time.sleep(2)
    except KeyboardInterrupt:
        info("stopping")
    finally:
        serve.shutdown()
        ray.shutdown()


def _replicas_running(serve: Any) -> int:
    application = serve.status().applications.get(APP_NAME)
    deployment = application.deployments.get(APP_NAME) if application else None
    if deployment is None:
        return 0
    return sum(
        n for state, n in deployment.replica_states.items() if str(state).endswith("RUNNING")
    )


def _wait_for_replicas(serve: Any, wanted: int, timeout_s: float = 600) -> int:
    """Block until `wanted` replicas run (serve.run returns once the first one does)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _check_running(serve)
        running = _replicas_running(serve)
        if running >= wanted:
            return running
        time.sleep(0.5)
    raise RunError(f"Ray Serve did not start {wanted} replicas within {timeout_s:.0f}s")


def _check_running(serve: Any) -> None:
    status = serve.status().applications.get(APP_NAME)
    if status is not None and str(status.status).endswith("DEPLOY_FAILED"):
        raise RunError(f"Ray Serve could not start the replicas: {status.message}")
