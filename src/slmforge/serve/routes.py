"""The server's routes: each endpoint hands its validated request (`protocol.py`) to the
`serving_*` module of its family and answers what that returns."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from slmforge.serve import serving_models, serving_tokenizer
from slmforge.serve.app import ServerState
from slmforge.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from slmforge.serve.serving_chat import create_chat_completion
from slmforge.serve.serving_completions import create_completion


def add_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health")
    async def health() -> JSONResponse:
        if state.served is not None:
            return JSONResponse({"status": "ok", "model": state.served.name})
        status = "error" if state.load_error else "loading"
        return JSONResponse({"status": status, "error": state.load_error}, status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return serving_models.list_models(state).model_dump()

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> dict[str, Any]:
        return serving_models.get_model(state, model).model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        return await create_chat_completion(state, body, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        return await create_completion(state, body, request)

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        return serving_tokenizer.tokenizer_info(state).model_dump()

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        return serving_tokenizer.tokenize(state, body).model_dump()

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        return serving_tokenizer.detokenize(state, body).model_dump()
