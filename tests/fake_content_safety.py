"""A local stand-in for Azure AI Content Safety (`text:analyze`, `text:shieldPrompt`).

The cloud service cannot be reached from tests (no network, and it would not be repeatable),
so this FastAPI app on 127.0.0.1 answers in the service's JSON shape: severities come from a
word -> (category, severity) table, `attackDetected` from a phrase list. It checks the
`Ocp-Apim-Subscription-Key` header and the api-version, and records each request.
It is a test double, not a model of the service's judgement.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

SEVERITIES = {"hateword": ("Hate", 4), "bomb": ("Violence", 6), "gore": ("Violence", 2)}
ATTACKS = ("ignore all previous instructions",)


class FakeContentSafety:
    def __init__(self, key: str = "cs-test-key") -> None:
        self.key = key
        self.requests: list[dict[str, Any]] = []
        self.fail_with: int | None = None
        self.port = 0
        self.app = FastAPI()
        self.app.post("/contentsafety/text:analyze")(self._analyze)
        self.app.post("/contentsafety/text:shieldPrompt")(self._shield)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _checked(self, request: Request) -> tuple[dict[str, Any] | None, JSONResponse | None]:
        if request.headers.get("ocp-apim-subscription-key") != self.key:
            return None, JSONResponse({"error": {"code": "401"}}, status_code=401)
        if request.query_params.get("api-version") != "2024-09-01":
            return None, JSONResponse({"error": {"code": "InvalidApiVersion"}}, status_code=400)
        if self.fail_with is not None:
            return None, JSONResponse({"error": {"code": "Busy"}}, status_code=self.fail_with)
        body = await request.json()
        self.requests.append({"path": request.url.path, "body": body})
        return body, None

    async def _analyze(self, request: Request) -> Any:
        body, error = await self._checked(request)
        if error is not None:
            return error
        text = body["text"].lower()
        found: dict[str, int] = {c: 0 for c in ("Hate", "SelfHarm", "Sexual", "Violence")}
        for word, (category, severity) in SEVERITIES.items():
            if word in text:
                found[category] = max(found[category], severity)
        analysis = [{"category": c, "severity": s} for c, s in found.items()]
        return {"blocklistsMatch": [], "categoriesAnalysis": analysis}

    async def _shield(self, request: Request) -> Any:
        body, error = await self._checked(request)
        if error is not None:
            return error
        attack = any(phrase in body["userPrompt"].lower() for phrase in ATTACKS)
        return {"userPromptAnalysis": {"attackDetected": attack}, "documentsAnalysis": []}

    def __enter__(self) -> FakeContentSafety:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", lifespan="off", access_log=False, log_config=None
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake Content Safety server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
