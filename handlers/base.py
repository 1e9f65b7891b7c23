"""What every HTTP route shares: authentication, parameters, CORS, and errors as JSON.

Handlers raise :class:`server.errors.ApiError`; :meth:`ApiHandler.write_error`
is the one place an exception becomes the JSON error body of docs/API.md §1.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any, ClassVar

import tornado.web
import voluptuous as vol

from server import metrics
from server.auth import LaunchUser, verify_launch_params
from server.chat import ChatService
from server.errors import (
    ApiError,
    BodyTooLarge,
    InternalError,
    InvalidParameter,
    MethodError,
    MethodNotAllowed,
    NotAuthenticated,
    RouteNotFound,
    StorageUnavailable,
    TooManyRequests,
    from_refusal,
)
from server.settings import Settings
from storage.errors import Refusal, is_storage_unavailable

log = logging.getLogger("chat.http")

MAX_BODY_BYTES = 64 * 1024
# A body of unknown length is read and dropped up to this, then the connection is closed.
MAX_DISCARDED_BODY_BYTES = 16 * 1024 * 1024
AUTH_SCHEME = "VK "
CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-Socket-Id"
CORS_ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_MAX_AGE_SECS = 600


def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    return "*" in allowed or origin in allowed


def authenticate(launch_params: str, settings: Settings) -> LaunchUser:
    """The user whose signed VK launch parameters these are, or NotAuthenticated."""
    if not launch_params:
        raise NotAuthenticated()
    return verify_launch_params(launch_params, settings.vk_secret, settings.auth_max_age)


def launch_params_from_header(header: str) -> str:
    """The launch parameters of an ``Authorization: VK <launch params>`` header ("" if none)."""
    return header[len(AUTH_SCHEME):].strip() if header.startswith(AUTH_SCHEME) else ""


def validate(schema: vol.Schema, values: dict[str, Any]) -> dict[str, Any]:
    """Validate parameters with a schema; a failure is a 400 naming the parameter."""
    try:
        return schema(values)
    except vol.MultipleInvalid as errors:
        error = errors.errors[0]
        param = str(error.path[0]) if error.path else "body"
        raise InvalidParameter(param, f"Invalid parameter {param}: {error.msg}") from None


def as_api_error(error: BaseException | None) -> ApiError:
    """Map any exception to the ApiError the client is told about."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, Refusal):
        return from_refusal(error)
    if isinstance(error, tornado.web.HTTPError):
        if error.status_code == 400:  # Tornado could not parse a body it reads itself (a malformed multipart)
            return InvalidParameter("body", "Malformed request body")
        return {404: RouteNotFound, 405: MethodNotAllowed, 413: BodyTooLarge}.get(
            error.status_code, InternalError
        )()
    if is_storage_unavailable(error):
        return StorageUnavailable()
    return InternalError()


def error_body(error: ApiError, code: int) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": error.message, **error.details()}
    return {"response": False, "error": body}


class JsonErrorsMixin:
    """Render every error of a handler (even Tornado's own 404/405/500) as API JSON."""

    # The per-route numbering of MethodErrors (docs/API.md §5).
    error_codes: ClassVar[dict[type[MethodError], int]] = {}

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        error = as_api_error(exc_info[1] if exc_info else None)
        if not exc_info and status_code in (404, 405):
            error = RouteNotFound() if status_code == 404 else MethodNotAllowed()
        code = error.code
        if isinstance(error, MethodError):
            if type(error) not in self.error_codes:
                log.error("%s has no code for %s", type(self).__name__, type(error).__name__)
                error, code = InternalError(), 500
            else:
                code = self.error_codes[type(error)]
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        if isinstance(error, TooManyRequests):
            self.set_header("Retry-After", str(error.retry_after_secs))
        if isinstance(error, MethodNotAllowed):
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        self.finish(json.dumps(error_body(error, code), ensure_ascii=False))

    def allowed_methods(self) -> list[str]:
        """The methods this route implements (for the Allow header a 405 must carry)."""
        return [
            method for method in self.SUPPORTED_METHODS  # type: ignore[attr-defined]
            if getattr(type(self), method.lower()) is not getattr(tornado.web.RequestHandler, method.lower())
        ]

    def log_exception(self, typ, value, tb) -> None:
        metrics.count_storage_error(value)
        if isinstance(value, (ApiError, Refusal, tornado.web.HTTPError)):
            return  # expected outcomes, already answered; the access log has them
        if is_storage_unavailable(value):
            log.error("storage unavailable: %s", value)
            return
        super().log_exception(typ, value, tb)  # type: ignore[misc]


@tornado.web.stream_request_body
class ApiHandler(JsonErrorsMixin, tornado.web.RequestHandler):
    """Base of the /v1 routes: the caller is authenticated in ``prepare``.

    Bodies are streamed in rather than buffered by Tornado, so that a body of
    any size gets the JSON 413 of the contract instead of Tornado's bare 400
    for bodies past its buffer; past MAX_BODY_BYTES the rest is discarded.
    """

    user: LaunchUser
    requires_auth: ClassVar[bool] = True
    # What the route takes and answers, read by parse() and by server.apidoc
    # (the OpenAPI document), so the two cannot disagree:
    parameters: ClassVar[vol.Schema | None] = None  # query parameters, or a JSON/form body
    path_parameters: ClassVar[dict[str, Any]] = {}  # name → validator of each path segment
    returns: ClassVar[dict[str, Any]] = {}  # JSON Schema of each success member besides "response"
    extra_errors: ClassVar[tuple[type[ApiError], ...]] = ()  # errors this route adds to the common ones
    reply_media: ClassVar[tuple[str, dict[str, Any]] | None] = None  # (type, schema) of a success that is not {"response": true}

    def initialize(self, chat: ChatService, settings: Settings) -> None:
        self.chat = chat
        self.config = settings  # not self.settings: that is Tornado's application settings
        self._body_chunks: list[bytes] = []
        self._body_bytes = 0
        self.set_default_headers()

    def set_default_headers(self) -> None:
        """JSON and CORS headers; run again when an error clears the response."""
        self.set_header("Content-Type", "application/json; charset=utf-8")
        # Answers are per user and change with every event: never cached.
        self.set_header("Cache-Control", "no-store")
        origin = self.request.headers.get("Origin")
        # Tornado calls this once before initialize(), when there are no settings yet.
        settings = getattr(self, "config", None)
        if origin and settings is not None and origin_allowed(origin, settings.cors_origins):
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Vary", "Origin")

    def compute_etag(self) -> None:
        """No ETag (and so no 304): see Cache-Control above."""
        return None

    async def options(self, *args: str) -> None:
        """Answer a CORS preflight."""
        self.set_header("Access-Control-Allow-Headers", CORS_ALLOW_HEADERS)
        self.set_header("Access-Control-Allow-Methods", CORS_ALLOW_METHODS)
        self.set_header("Access-Control-Max-Age", str(CORS_MAX_AGE_SECS))
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()

    def prepare(self) -> None:
        self.request.connection.set_max_body_size(MAX_DISCARDED_BODY_BYTES)  # type: ignore[union-attr]
        if self.request.method == "OPTIONS":
            return
        if self.requires_auth:
            self.user = authenticate(
                launch_params_from_header(self.request.headers.get("Authorization", "")), self.config
            )
        declared = self.request.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise BodyTooLarge()

    def data_received(self, chunk: bytes) -> None:
        """Invoked for each piece of the body as it arrives."""
        self._body_bytes += len(chunk)
        if self._body_bytes <= MAX_BODY_BYTES:
            self._body_chunks.append(chunk)

    @property
    def body(self) -> bytes:
        if self._body_bytes > MAX_BODY_BYTES:
            raise BodyTooLarge()  # a chunked body that did not say its length
        return b"".join(self._body_chunks)

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        """A query or path value as text; bytes that are not UTF-8 are the caller's 400, named."""
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            param = name or "path"
            raise InvalidParameter(param, f"Invalid parameter {param}: not valid UTF-8") from None

    @property
    def socket_id(self) -> str | None:
        return self.request.headers.get("X-Socket-Id") or None

    def arguments(self) -> dict[str, Any]:
        """The request's parameters: the query string, merged with a JSON or form body."""
        values: dict[str, Any] = {
            name: self.decode_argument(raw[-1], name) for name, raw in self.request.query_arguments.items()
        }
        body = self.body
        if not body.strip():
            return values
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        # A form body, unless it is plainly JSON: some clients send JSON with
        # the form content type (their default).
        if content_type == "application/x-www-form-urlencoded" and not body.lstrip().startswith(b"{"):
            try:
                form = urllib.parse.parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
            except (UnicodeDecodeError, ValueError):
                raise InvalidParameter("body", "Malformed form body") from None
            values.update({name: raw[-1] for name, raw in form.items()})
            return values
        try:
            parsed = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise InvalidParameter("body", "Malformed JSON body") from None
        if not isinstance(parsed, dict):
            raise InvalidParameter("body", "The JSON body must be an object")
        values.update(parsed)
        return values

    def parse(self, values: dict[str, Any] | None = None) -> dict[str, Any]:
        """The request's parameters validated by the route's schema (400 naming the parameter otherwise)."""
        assert self.parameters is not None, f"{type(self).__name__} declares no parameters"
        return validate(self.parameters, self.arguments() if values is None else values)

    def reply(self, **fields: Any) -> None:
        self.finish(json.dumps({"response": True, **fields}, ensure_ascii=False))


class NotFoundHandler(ApiHandler):
    """Any unknown route: a JSON 404, whatever the method."""

    def prepare(self) -> None:
        raise RouteNotFound()
