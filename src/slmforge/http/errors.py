"""Errors as the OpenAI API returns them: `{"error": {"message", "type", "param", "code"}}`.

Every failure a request can meet becomes one of these with the right status, so clients (the
`openai` package raises `BadRequestError`, `AuthenticationError`, `NotFoundError`, ...) react
as they would against the real service; nothing reaches the client as a bare 500.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from slmforge.progress import warn

TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def param_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """`("body", "messages", 0, "role")` -> `messages[0].role`."""
    path = ""
    for part in loc:
        if part == "body" and not path:
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" in str(part) or "-" in str(part):
            continue  # pydantic's union member labels such as `list[int]` or `function-after`
        else:
            path += f".{part}" if path else str(part)
    return path


def validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = param_path(first.get("loc", ()))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    named = re.match(r"^([A-Za-z_][\w.\[\]]*): ", message)
    if named:  # a model's own check names its field as "field: problem"
        param = f"{param}.{named.group(1)}" if param else named.group(1)
    if first.get("type") == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"
    elif first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    elif first.get("type") == "json_invalid":
        message = "The request body is not valid JSON."
    elif param and not message.startswith(param):
        message = f"Invalid value for '{param}': {message}"
    return APIError(400, message, param=param or None, code=first.get("type"))


def install(app: Any) -> None:
    """Route every exception to an OpenAI error object."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"Unknown path {request.url.path}", 405: "Method not allowed"}.get(
            exc.status_code, str(exc.detail)
        )
        return APIError(exc.status_code, message).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        warn(f"internal error on {request.url.path}: {type(exc).__name__}: {exc}")
        return APIError(500, "The server had an error while processing your request.").response()
