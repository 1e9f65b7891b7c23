"""The one error type of the API and its subclasses.

Application code raises; ``handlers.base`` (HTTP) turns the error into the
JSON body of docs/API.md §1. The tree::

    ApiError(status, code, message)
    ├── InvalidParameter          400  code 400, carries ``param``
    ├── NotAWebSocket             400  (a plain GET of /v1/ws)
    ├── NotAuthenticated          401
    ├── ForeignOrigin             403  (a WebSocket handshake from an origin not allowed)
    ├── RouteNotFound             404
    ├── MethodNotAllowed          405
    ├── BodyTooLarge              413
    ├── TooManyRequests           429
    ├── HeadersTooLarge           431
    ├── RequestRefused            4xx  (what Tornado itself refused: a bad Range, ...)
    ├── InternalError             500
    ├── StorageUnavailable        503
    ├── NotReady                  503  (/readyz), carries ``checks``
    ├── ShuttingDown              503  (a request arriving after SIGTERM)
    └── MethodError               per-route code (1-4), see below
        ├── ChatIdRequired            400
        ├── NoSuchConversation        404
        ├── NotAMember                403
        ├── NoRights                  403
        ├── AlreadyMember             409
        ├── TooManyMembers            409
        ├── DuplicateName             409
        └── SocketRequired            428

Generic errors carry a code equal to their HTTP status. A ``MethodError``
is the same failure in every route ("no such conversation"), but the
original API numbers it per route (1 in ``leave``, 2 in ``messages/get``), so
the service raises it without a code and the route's table supplies one.

Storage raises its own refusals (``storage.errors``), plain facts with no
status; :func:`from_refusal` is the one place they become API errors.
"""

from __future__ import annotations

from storage import errors as storage_errors


class ApiError(Exception):
    """An error the API reports to its caller as JSON."""

    status: int = 500
    message: str = "Internal server error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message

    @property
    def code(self) -> int:
        return self.status

    def details(self) -> dict[str, object]:
        """Members the error object carries besides code and message."""
        return {}


class InvalidParameter(ApiError):
    status = 400
    message = "Invalid parameter"

    def __init__(self, param: str, message: str | None = None) -> None:
        super().__init__(message or f"Invalid parameter: {param}")
        self.param = param

    def details(self) -> dict[str, object]:
        return {"param": self.param}


class NotAuthenticated(ApiError):
    status = 401
    message = "Not authenticated: pass the VK launch parameters"


class NotAWebSocket(ApiError):
    status = 400
    message = "Expected a WebSocket handshake (Upgrade: websocket)"


class ForeignOrigin(ApiError):
    status = 403
    message = "This Origin may not open a WebSocket here"


class RouteNotFound(ApiError):
    status = 404
    message = "Unknown method"


class MethodNotAllowed(ApiError):
    status = 405
    message = "HTTP method not allowed here"


class BodyTooLarge(ApiError):
    status = 413
    message = "Request body is too large"


class TooManyRequests(ApiError):
    status = 429
    message = "Too many messages, slow down"

    def __init__(self, retry_after_secs: int) -> None:
        super().__init__()
        self.retry_after_secs = retry_after_secs


class HeadersTooLarge(ApiError):
    status = 431
    message = "Request headers are too large"


class RequestRefused(ApiError):
    """A request Tornado refused on its own (an unsatisfiable Range, ...), with its 4xx status."""

    message = "Malformed request"

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status


class InternalError(ApiError):
    status = 500
    message = "Internal server error"


class StorageUnavailable(ApiError):
    status = 503
    message = "Storage is unavailable, try again later"


class NotReady(ApiError):
    """A dependency did not answer the readiness check; ``checks`` has every state."""

    status = 503

    def __init__(self, checks: dict[str, str]) -> None:
        failing = [name for name, state in checks.items() if state != "ok"]
        super().__init__(f"Not ready: {', '.join(failing)}")
        self.checks = checks

    def details(self) -> dict[str, object]:
        return {"checks": self.checks}


class ShuttingDown(ApiError):
    status = 503
    message = "The server is shutting down, try again"


class MethodError(ApiError):
    """A failure the original API numbers per route (codes 1-4)."""


class ChatIdRequired(MethodError):
    status = 400
    message = "Pass the chat id (?chat=0)"


class NoSuchConversation(MethodError):
    status = 404
    message = "No such conversation"


class NotAMember(MethodError):
    status = 403
    message = "You are not a member of this conversation"


class NoRights(MethodError):
    status = 403
    message = "You have no rights to do this"


class AlreadyMember(MethodError):
    status = 409
    message = "You are already a member of this conversation"


class TooManyMembers(MethodError):
    status = 409
    message = "Too many members"


class DuplicateName(MethodError):
    status = 409
    message = "You already created a conversation with this name"


class SocketRequired(MethodError):
    status = 428
    message = "Create a websocket connection first"


_API_ERROR_OF_REFUSAL: dict[type[storage_errors.Refusal], type[MethodError]] = {
    storage_errors.ConversationMissing: NoSuchConversation,
    storage_errors.NotMember: NotAMember,
    storage_errors.AlreadyMember: AlreadyMember,
    storage_errors.MembersFull: TooManyMembers,
    storage_errors.NameTaken: DuplicateName,
    storage_errors.NotCreator: NoRights,
}


def from_refusal(refusal: storage_errors.Refusal) -> MethodError:
    """The API error telling a caller what storage refused."""
    return _API_ERROR_OF_REFUSAL[type(refusal)]()
