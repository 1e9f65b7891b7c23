"""What every HTTP route shares: authentication, parameters, CORS, and errors as JSON.

Handlers raise :class:`server.errors.ApiError`; :meth:`ApiHandler.write_error`
is the one place an exception becomes the JSON error body of docs/API.md §1.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import urllib.parse
from typing import Any, ClassVar

import tornado.web
import voluptuous as vol

from server import metrics
from server.auth import LaunchUser, verify_launch_params
from server.chat import ChatService
from server.drain import Drain
from server.errors import (
    ApiError,
    BodyTooLarge,
    HeadersTooLarge,
    InternalError,
    InvalidParameter,
    MethodError,
    MethodNotAllowed,
    NotAuthenticated,
    RequestRefused,
    RouteNotFound,
    StorageUnavailable,
    TooManyRequests,
    from_refusal,
)
from server.settings import Settings
from storage import deadline
from storage.errors import Refusal, is_storage_unavailable

log = logging.getLogger("chat.http")

MAX_BODY_BYTES = 64 * 1024
# The request line and headers together; Tornado reads up to
# server.app.MAX_READ_HEADER_BYTES so that these get the JSON 431.
MAX_HEADER_BYTES = 64 * 1024
# Deeper JSON is refused (400) before anything walks it; no parameter nests at all.
MAX_JSON_DEPTH = 32
# A body of unknown length is read and dropped up to this, then the connection is closed.
MAX_DISCARDED_BODY_BYTES = 16 * 1024 * 1024
AUTH_SCHEME = "VK "
CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-Socket-Id"
CORS_ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_MAX_AGE_SECS = 600


def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    return "*" in allowed or origin in allowed


def client_address(peer: str, real_ip: str | None, settings: Settings) -> str:
    """The client's address: the peer's, or the ``X-Real-IP`` a trusted proxy in front (nginx) set."""
    if not real_ip:
        return peer
    try:
        peer_ip = ipaddress.ip_address(peer)
        claimed = ipaddress.ip_address(real_ip.strip())
    except ValueError:
        return peer
    if any(peer_ip in network for network in settings.trusted_proxy_networks):
        return str(claimed)
    return peer


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


def json_depth(value: Any) -> int:
    """How deeply containers nest in a parsed JSON value (a scalar is 0), without recursion."""
    depth, level = 0, [(value, 1)]
    while level:
        item, at = level.pop()
        if isinstance(item, (dict, list)):
            depth = max(depth, at)
            level.extend((child, at + 1) for child in (item.values() if isinstance(item, dict) else item))
    return depth


def parse_json_object(body: bytes) -> dict[str, Any]:
    """A JSON body that is an object nested at most MAX_JSON_DEPTH deep, or InvalidParameter."""
    too_deep = InvalidParameter("body", f"JSON nested too deep (at most {MAX_JSON_DEPTH} levels)")
    try:
        parsed = json.loads(body)
    except RecursionError:  # Python's parser gives up near a thousand levels
        raise too_deep from None
    except (UnicodeDecodeError, ValueError):
        raise InvalidParameter("body", "Malformed JSON body") from None
    # Counting brackets first keeps the walk off the usual flat body.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and json_depth(parsed) > MAX_JSON_DEPTH:
        raise too_deep
    if not isinstance(parsed, dict):
        raise InvalidParameter("body", "The JSON body must be an object")
    return parsed


def as_api_error(error: BaseException | None) -> ApiError:
    """Map any exception to the ApiError the client is told about."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, Refusal):
        return from_refusal(error)
    if isinstance(error, tornado.web.HTTPError):
        if error.status_code == 400:  # Tornado could not parse a body it reads itself (a malformed multipart)
            return InvalidParameter("body", "Malformed request body")
        known = {404: RouteNotFound, 405: MethodNotAllowed, 413: BodyTooLarge}.get(error.status_code)
        if known is not None:
            return known()
        # Tornado's own refusals of a request (a bad Range on a file, ...) are
        # the client's fault: its 4xx, in JSON, never a 500.
        return RequestRefused(error.status_code) if 400 <= error.status_code < 500 else InternalError()
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

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        """Decode a parameter as UTF-8: a query or form value that is not is a 400 naming it.

        A path piece (no name) decodes with replacement characters instead,
        and the route's own check refuses it after authentication, as the
        check order of docs/API.md §1 asks.
        """
        if name is None:
            return value.decode("utf-8", errors="replace")
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidParameter(name, f"Invalid parameter {name}: not valid UTF-8") from None

    def log_exception(self, typ, value, tb) -> None:
        metrics.count_storage_error(value)
        if isinstance(value, (ApiError, Refusal, tornado.web.HTTPError)):
            return  # expected outcomes, already answered; the access log has them
        if is_storage_unavailable(value):
            log.error("storage unavailable: %s", value)
            return
        super().log_exception(typ, value, tb)  # type: ignore[misc]


class BoundedRequestMixin:
    """The size limits every handler applies before it reads anything: headers, then body.

    Concrete handlers are ``stream_request_body``: Tornado hands the body
    over in pieces instead of buffering it, so a body of any size gets the
    JSON 413 of the contract instead of Tornado's bare 400 for bodies past
    its buffer (past MAX_BODY_BYTES the rest is discarded), and a body with
    a multipart type is never parsed by Tornado (a junk one made it fail).
    """

    request: Any
    _body_chunks: list[bytes] | None = None
    _body_bytes = 0

    def prepare(self) -> None:
        self.refuse_large_headers()
        self.refuse_large_body()

    def refuse_large_headers(self) -> None:
        """Headers (with the request line) over MAX_HEADER_BYTES: 431."""
        # Reading may go on after a refusal: let Tornado discard, not fail, a long body.
        self.request.connection.set_max_body_size(MAX_DISCARDED_BODY_BYTES)
        request = self.request
        size = len(request.method) + len(request.uri) + len(request.version) + 4
        size += sum(len(name) + len(value) + 4 for name, value in request.headers.get_all())
        if size > MAX_HEADER_BYTES:
            raise HeadersTooLarge()

    def refuse_large_body(self) -> None:
        """A declared body over MAX_BODY_BYTES: 413 before it is read."""
        declared = self.request.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise BodyTooLarge()

    def data_received(self, chunk: bytes) -> None:
        """Invoked for each piece of the body as it arrives."""
        self._body_bytes += len(chunk)
        if self._body_bytes <= MAX_BODY_BYTES:
            if self._body_chunks is None:
                self._body_chunks = []
            self._body_chunks.append(chunk)

    @property
    def body(self) -> bytes:
        if self._body_bytes > MAX_BODY_BYTES:
            raise BodyTooLarge()  # a chunked body that did not say its length
        return b"".join(self._body_chunks or ())


@tornado.web.stream_request_body
class ApiHandler(JsonErrorsMixin, BoundedRequestMixin, tornado.web.RequestHandler):
    """Base of the /v1 routes: the caller is authenticated in ``prepare``."""

    user: LaunchUser
    requires_auth: ClassVar[bool] = True
    # What the route takes and answers, read by parse() and by server.apidoc
    # (the OpenAPI document), so the two cannot disagree:
    parameters: ClassVar[vol.Schema | None] = None  # query parameters, or a JSON/form body
    path_parameters: ClassVar[dict[str, Any]] = {}  # name → validator of each path segment
    returns: ClassVar[dict[str, Any]] = {}  # JSON Schema of each success member besides "response"
    extra_errors: ClassVar[tuple[type[ApiError], ...]] = ()  # errors this route adds to the common ones
    reply_media: ClassVar[tuple[str, dict[str, Any]] | None] = None  # (type, schema) of a success that is not {"response": true}
    _admitted = False  # counted in the drain, so shutdown waits for this request's answer

    def initialize(self, chat: ChatService, settings: Settings, drain: Drain) -> None:
        self.chat = chat
        self.config = settings  # not self.settings: that is Tornado's application settings
        self.drain = drain
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
        self.refuse_large_headers()
        self.drain.enter()
        self._admitted = True
        deadline.begin(self.config.db_timeout)  # one storage deadline for the whole request
        if self.request.method == "OPTIONS":
            return
        if self.requires_auth:
            self.user = authenticate(
                launch_params_from_header(self.request.headers.get("Authorization", "")), self.config
            )
        self.refuse_large_body()

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
        values.update(parse_json_object(body))
        return values

    def on_finish(self) -> None:
        """Invoked once the answer is written, whatever it was."""
        if self._admitted:
            self._admitted = False
            self.drain.leave()

    def parse(self, values: dict[str, Any] | None = None) -> dict[str, Any]:
        """The request's parameters validated by the route's schema (400 naming the parameter otherwise)."""
        assert self.parameters is not None, f"{type(self).__name__} declares no parameters"
        return validate(self.parameters, self.arguments() if values is None else values)

    def reply(self, **fields: Any) -> None:
        self.finish(json.dumps({"response": True, **fields}, ensure_ascii=False))


class NotFoundHandler(ApiHandler):
    """Any unknown route: a JSON 404, whatever the method."""

    def prepare(self) -> None:
        self.refuse_large_headers()
        raise RouteNotFound()
