"""`slmforge app`: build the local and cloud engines from their specs, then serve the page.

Specs are checked before anything loads (a bad `--local` folder or `--cloud` spec is a one-line
error), the socket is bound next (a port in use is a clear error, `--port 0` works), then the
engines load and uvicorn serves (`slmforge.http`'s helpers, as for `slmforge serve`).
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

from slmforge.app.api import AppState, create_app
from slmforge.app.scoring import PairJudge
from slmforge.config.app import AppConfig, route_settings
from slmforge.errors import InputError, SlmforgeError
from slmforge.http.binding import base_url, bind
from slmforge.http.host import serve_on, uvicorn_server
from slmforge.progress import info
from slmforge.routing.router import Router
from slmforge.runtime.engine import Engine
from slmforge.runtime.local_models import unwrap
from slmforge.runtime.specs import EngineSpec, checked_spec, load_engine


def check_spec(option: str, spec: str) -> EngineSpec:
    """Parse and check a spec (the resolver's rules); a local one must name an existing
    folder (no hub downloads here)."""
    return checked_spec(spec, f"--{option}", hub=False)


def spec_engine(
    spec: EngineSpec, key_env: str | None = None, api_version: str | None = None
) -> Engine:
    """The engine of a spec; for openai: specs the key comes from `key_env` (default: the
    spec's usual variable) and `api_version` makes it Azure OpenAI."""
    return load_engine(spec, api_key_env=key_env, api_version=api_version)


def cloud_engine(spec: EngineSpec, config: Any) -> Engine:
    """The cloud side of `config` (an `AppConfig` or `ServeConfig`)."""
    return spec_engine(spec, config.cloud_key_env, config.cloud_api_version)


def local_engine(spec: EngineSpec) -> tuple[Engine, str | None]:
    """The local engine and the adapter selected by `FOLDER+ADAPTER` (the page may pick
    another one, or the base model)."""
    try:
        return unwrap(load_engine(spec))
    except InputError as exc:
        raise InputError(f"--local: {exc}") from None


def _content_filter(path: Path | None) -> Any:
    if path is None:
        return None
    from slmforge.safety.filter import SafetyFilter

    return SafetyFilter.from_file(path)


def _warm_embeddings() -> None:
    """Load the embedding model in the background, so the first comparison is quick."""
    from slmforge.models.embeddings import embedding_model

    with contextlib.suppress(SlmforgeError):  # the page says why similarity is missing
        embedding_model()


class AppServer:
    """The app: `run()` serves until stopped; `stop()` ends it from another thread."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        local_spec = check_spec("local", config.local)
        cloud_spec = check_spec("cloud", config.cloud)
        judge_spec = check_spec("judge", config.judge) if config.judge else None
        content_filter = _content_filter(config.safety)
        self.socket = bind(config.host, config.port)
        self.url = base_url(self.socket)
        try:
            self.state = self._load(local_spec, cloud_spec, judge_spec, content_filter)
        except BaseException:
            self.socket.close()
            raise
        self._uvicorn = uvicorn_server(create_app(self.state))

    def _load(self, local_spec, cloud_spec, judge_spec, content_filter) -> AppState:
        cloud = cloud_engine(cloud_spec, self.config)
        local, adapter = local_engine(local_spec)
        router = Router(local, cloud, route_settings(self.config), content_filter)
        judge = None
        if judge_spec is not None:
            judge = PairJudge(spec_engine(judge_spec), self.config.judge or "")
        threading.Thread(target=_warm_embeddings, name="embeddings", daemon=True).start()
        local_name = Path(local_spec.model).name
        return AppState(router, local_name, cloud.name, adapter, self.config.route, judge)

    def run(self) -> None:
        info(f"app on {self.url} (local: {self.state.local_name}, cloud: {self.state.cloud_name})")
        serve_on(self._uvicorn, self.socket, self.config.host)

    def stop(self) -> None:
        self._uvicorn.should_exit = True


def run_app(config: AppConfig) -> None:
    """Serve the app until Ctrl-C."""
    AppServer(config).run()
