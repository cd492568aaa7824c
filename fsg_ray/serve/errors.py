"""Every error the API answers is JSON naming the field: {"error": {"status", "code", "field", "message"}}."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    def __init__(self, status: int, code: str, field: str | None, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.field, self.message, self.headers = status, code, field, message, headers


def error_response(status: int, code: str, field: str | None, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"status": status, "code": code, "field": field, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def field_name(loc: tuple) -> str:
    """('body', 'seeds', 3) -> 'seeds[3]'; ('path', 'seed') -> 'seed'."""
    parts = [part for part in loc if part not in ("body", "path", "query", "header")]
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def validation_error(errors: list[dict]) -> ApiError:
    first = errors[0]
    name = field_name(tuple(first.get("loc", ())))
    return ApiError(400, "invalid_request", name, f"{name}: {first.get('msg', 'invalid value')}")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.field, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        error = validation_error(list(exc.errors()))
        return error_response(error.status, error.code, error.field, error.message)

    @app.exception_handler(ValidationError)
    async def body_validation(_: Request, exc: ValidationError) -> JSONResponse:
        error = validation_error(exc.errors())
        return error_response(error.status, error.code, error.field, error.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path[:200]}: {exc.detail}"
        return error_response(exc.status_code, "http_error", None, message, getattr(exc, "headers", None))
