"""Every error the API answers is JSON: {"error": one line, "field": the input it is about}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..checkpoints import CheckpointError
from ..corpus import CorpusError, CorpusWriteError
from ..errors import GenerationError
from ..store import StoreError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A request the API refuses; `field` names the input that is wrong, when there is one."""

    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers


def error_response(status: int, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": message} if field is None else {"error": message, "field": field}
    return JSONResponse(body, status_code=status, headers=headers)


def _field_name(loc: tuple) -> str:
    """('body', 'lines', 3) -> 'lines[3]'; ('query', 'limit') -> 'limit'; ('body',) -> 'body'."""
    parts = list(loc[1:]) or list(loc[:1])
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        field, message = "body", "not valid JSON"
    else:
        field, message = _field_name(tuple(first.get("loc", ("body",)))), first.get("msg", "invalid value")
    return error_response(422, f"{field}: {message}", field)


async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.field, exc.headers)


async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


async def _unavailable(_request: Request, exc: Exception) -> JSONResponse:
    # No checkpoint yet, or the database locked by a long write: try again later.
    return error_response(503, str(exc), headers={"Retry-After": "5"})


async def _bad_generation(_request: Request, exc: GenerationError) -> JSONResponse:
    # The engine's checks name the command-line flag ("--top-k must be ..."): name the field.
    message = str(exc)
    first = message.split(" ", 1)[0]
    field = first.lstrip("-").replace("-", "_") if first.startswith("-") else None
    if field is not None:
        message = field + message[len(first):]
    return error_response(422, message, field or "body")


async def _corpus_error(_request: Request, exc: CorpusError) -> JSONResponse:
    log.error("corpus error: %s", exc)
    return error_response(500, str(exc))


async def _corpus_not_written(_request: Request, exc: CorpusWriteError) -> JSONResponse:
    # Disk full or a file size limit: the batch was cut back whole, the client may send it again.
    log.error("corpus append refused: %s", exc)
    return error_response(507, str(exc))


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error in a request")
    return error_response(500, f"internal error ({type(exc).__name__}); see the server log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(CheckpointError, _unavailable)
    app.add_exception_handler(StoreError, _unavailable)
    app.add_exception_handler(GenerationError, _bad_generation)
    app.add_exception_handler(CorpusError, _corpus_error)
    app.add_exception_handler(CorpusWriteError, _corpus_not_written)
    app.add_exception_handler(Exception, _unexpected)
