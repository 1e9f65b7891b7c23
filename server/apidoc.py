"""The machine-readable API: an OpenAPI 3.1 document of the HTTP routes, an AsyncAPI 3 one of the socket.

Nothing here is written by hand twice. The OpenAPI document is built from
the application's own route table and, per route, from what its handler
declares and uses (``handlers.base.ApiHandler``): the voluptuous schema its
``parse()`` checks, its path validators, its ``error_codes`` table and the
generic errors every route shares (``server.errors``), and the JSON Schema of
its answer (``server.wire_schemas``). The AsyncAPI document is built from the
frame schemas in ``server.wire_schemas``; ``docs/asyncapi.json`` is its
output, and a test fails when the file, the schemas or the events
``server.wire`` emits disagree.
"""

from __future__ import annotations

from typing import Any, Iterable

import tornado.web
import tornado.websocket
import voluptuous as vol

from server import wire_schemas
from server.errors import (
    ApiError,
    BodyTooLarge,
    InternalError,
    InvalidParameter,
    NotAuthenticated,
    NotReady,
    SocketRequired,
    StorageUnavailable,
    TooManyRequests,
)
from server.wire_schemas import Schema, closed_object

API_TITLE = "VK Mini Apps chat server"
API_VERSION = "1"
HTTP_METHODS = ("get", "post", "delete")
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
SECURITY_SCHEME = "vkLaunch"
ASYNCAPI_FILE = "docs/asyncapi.json"

# Error members beyond code and message, by the error that carries them (ApiError.details()).
ERROR_DETAILS: dict[type[ApiError], dict[str, Schema]] = {
    InvalidParameter: {"param": {"type": "string", "description": "the parameter at fault"}},
    NotReady: {"checks": {"type": "object", "additionalProperties": {"enum": ["ok", "timeout", "unavailable"]}}},
}


# Parameters


def validator_schema(validator: Any) -> Schema:
    """What a voluptuous validator of ours accepts, as JSON Schema."""
    if hasattr(validator, "json_schema"):
        return validator.json_schema()
    if isinstance(validator, vol.In):
        return {"type": "string", "enum": list(validator.container)}
    raise TypeError(f"no JSON Schema for the validator {validator!r}: give it a json_schema() method")


def parameters_schema(schema: vol.Schema) -> tuple[dict[str, Schema], list[str]]:
    """(properties, required names) of a voluptuous mapping schema."""
    properties: dict[str, Schema] = {}
    required: list[str] = []
    for marker, validator in schema.schema.items():
        name = str(marker.schema if isinstance(marker, vol.Marker) else marker)
        prop = validator_schema(validator)
        if isinstance(marker, vol.Required):
            required.append(name)
        default = getattr(marker, "default", vol.UNDEFINED)
        if callable(default):
            prop = {**prop, "default": default()}
        properties[name] = prop
    return properties, required


# Errors


def error_response(errors: list[tuple[type[ApiError], int]]) -> dict[str, Any]:
    """One status's response: the error body with the codes these errors have under it."""
    detail_members: dict[str, Schema] = {}
    for error, _ in errors:
        detail_members.update(ERROR_DETAILS.get(error, {}))
    codes = sorted({code for _, code in errors})
    error_object = closed_object(
        {"code": {"type": "integer", "enum": codes}, "message": {"type": "string"}}, detail_members
    )
    response: dict[str, Any] = {
        "description": "; ".join(f"code {code}: {error.message}" for error, code in errors),
        "content": {JSON: {"schema": closed_object({"response": {"const": False}, "error": error_object})}},
    }
    if any(issubclass(error, TooManyRequests) for error, _ in errors):
        response["headers"] = {"Retry-After": {
            "description": "seconds to wait before sending again", "schema": {"type": "integer", "minimum": 1}}}
    return response


def route_errors(handler: type) -> list[tuple[type[ApiError], int]]:
    """Every error a route may answer, with its code: the common ones, the route's own, its table's."""
    errors: list[type[ApiError]] = []
    if getattr(handler, "requires_auth", False):
        errors += [NotAuthenticated, StorageUnavailable]
    if getattr(handler, "parameters", None) is not None or getattr(handler, "path_parameters", None):
        errors.append(InvalidParameter)
    errors += [BodyTooLarge, InternalError, *getattr(handler, "extra_errors", ())]
    coded = [(error, error.status) for error in dict.fromkeys(errors)]
    coded += list(getattr(handler, "error_codes", {}).items())
    return coded


def error_responses(handler: type) -> dict[str, Any]:
    by_status: dict[int, list[tuple[type[ApiError], int]]] = {}
    for error, code in route_errors(handler):
        by_status.setdefault(error.status, []).append((error, code))
    return {str(status): error_response(errors) for status, errors in sorted(by_status.items())}


# Operations


def implemented_methods(handler: type) -> list[str]:
    return [
        method for method in HTTP_METHODS
        if getattr(handler, method) is not getattr(tornado.web.RequestHandler, method)
    ]


def summary_of(handler: type) -> str:
    return (handler.__doc__ or handler.__name__).strip().splitlines()[0]


def operation(path: str, handler: type, method: str, tag: str) -> dict[str, Any]:
    """The OpenAPI operation of one method of an ApiHandler route."""
    name = handler.__name__.removesuffix("Handler")
    alias = getattr(handler, method).__name__ != method  # e.g. ``post = get``: same operation, other method
    op: dict[str, Any] = {
        "operationId": name[0].lower() + name[1:] + (method.capitalize() if alias else ""),
        "summary": summary_of(handler),
        "tags": [tag],
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": validator_schema(validator)}
            for name, validator in handler.path_parameters.items()
        ],
    }
    if handler.parameters is not None:
        properties, required = parameters_schema(handler.parameters)
        if method == "get":
            op["parameters"] += [
                {"name": name, "in": "query", "required": name in required, "schema": schema}
                for name, schema in properties.items()
            ]
        else:
            body: Schema = {"type": "object", "properties": properties, "required": required}
            op["requestBody"] = {"required": bool(required), "content": {JSON: {"schema": body}, FORM: {"schema": body}}}
    if SocketRequired in handler.error_codes:
        op["parameters"].append({
            "name": "X-Socket-Id", "in": "header", "required": False, "schema": {"type": "string"},
            "description": "act for this open socket of yours only (global chat, viewing); "
                           "without it: all your open sockets",
        })
    if not op["parameters"]:
        del op["parameters"]
    op["security"] = [{SECURITY_SCHEME: []}] if handler.requires_auth else []
    if handler.reply_media is not None:
        media_type, schema = handler.reply_media
        success = {"description": "OK", "content": {media_type: {"schema": schema}}}
    else:
        success = {"description": "OK", "content": {JSON: {"schema": closed_object(
            {"response": {"const": True}, **handler.returns})}}}
    op["responses"] = {"200": success, **error_responses(handler)}
    return op


def add_links(paths: dict[str, Any]) -> None:
    """Link each answer carrying a conversation_id to the operations that take one in their path.

    Tools that follow links (schemathesis's stateful phase) then act on
    conversations that exist instead of guessing ids.
    """
    targets = [
        op["operationId"] for operations in paths.values() for op in operations.values()
        if any(p.get("in") == "path" and p["name"] == "conversation_id" for p in op.get("parameters", ()))
    ]
    for operations in paths.values():
        for op in operations.values():
            success = op["responses"].get("200", {}).get("content", {}).get(JSON, {}).get("schema", {})
            if "conversation_id" in success.get("properties", {}):
                op["responses"]["200"]["links"] = {
                    target: {"operationId": target,
                             "parameters": {"path.conversation_id": "$response.body#/conversation_id"}}
                    for target in targets
                }


def websocket_operation(handler: type) -> dict[str, Any]:
    """The handshake of /v1/ws: refused in JSON, or upgraded (then see the AsyncAPI document)."""
    properties, _ = parameters_schema(handler.parameters)
    launch = [
        {"name": "vk_user_id", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
         "description": "with every other vk_* launch parameter and sign, as VK launched the app "
                        "(or the Authorization header instead)"},
        {"name": "sign", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "resume", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "the pos of the last event received: the first frame is then resumed "
                        "(the missed events follow) or resume_failed"},
    ]
    return {
        "operationId": "openSocket",
        "summary": summary_of(handler),
        "description": "A WebSocket upgrade (Upgrade: websocket, Connection: Upgrade, Sec-WebSocket-Key, "
                       "Sec-WebSocket-Version: 13). The frames that follow are described in "
                       "docs/asyncapi.json.",
        "tags": ["websocket"],
        "parameters": launch + [
            {"name": name, "in": "query", "required": False, "schema": schema} for name, schema in properties.items()
        ],
        "security": [{SECURITY_SCHEME: []}, {}],
        "responses": {"101": {"description": "Switching Protocols: the socket is open"}, **error_responses(handler)},
    }


def tag_of(path: str) -> str:
    parts = path.strip("/").split("/")
    return parts[1] if parts[0] == "v1" and len(parts) > 2 else "operations"


def openapi_document(routes: Iterable[tuple[str, type]]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of these (path template, handler) routes."""
    paths: dict[str, Any] = {}
    for path, handler in routes:
        if issubclass(handler, tornado.websocket.WebSocketHandler):
            paths[path] = {"get": websocket_operation(handler)}
        else:
            paths[path] = {
                method: operation(path, handler, method, tag_of(path)) for method in implemented_methods(handler)
            }
    add_links(paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": API_TITLE,
            "version": API_VERSION,
            "description": "The HTTP JSON API (docs/API.md). Errors are "
                           '{"response": false, "error": {"code", "message"}}: codes 1-4 are per route, '
                           "three-digit codes equal the HTTP status. Every route also answers an OPTIONS "
                           "CORS preflight with 204. The WebSocket's frames: docs/asyncapi.json.",
        },
        "paths": paths,
        "components": {"securitySchemes": {SECURITY_SCHEME: {
            "type": "apiKey", "in": "header", "name": "Authorization",
            "description": "`VK <launch parameters>`: the query string VK launched the Mini App with, "
                           "signed by VK (docs/API.md §2)",
        }}},
    }


# AsyncAPI


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3 document of /v1/ws, as the server sees it (it sends events, receives pings)."""
    events = list(wire_schemas.EVENT_DATA) + list(wire_schemas.BARE_EVENTS)
    messages = {
        event: {"name": event, "title": event, "summary": wire_schemas.EVENT_DESCRIPTIONS[event],
                "contentType": JSON, "payload": wire_schemas.frame(event)}
        for event in events
    }
    messages["ping"] = {"name": "ping", "title": "ping", "summary": 'Keep-alive: answered with {"event": "pong"}; '
                        "any other client frame is ignored.", "contentType": JSON, "payload": wire_schemas.CLIENT_PING}
    query = {
        "type": "object",
        "properties": {
            "vk_user_id": {"type": "integer", "minimum": 1},
            "sign": {"type": "string"},
            "name": {"type": "string", "minLength": 1, "maxLength": 100},
            "avatar": {"type": "string", "maxLength": 500, "pattern": "^https?://"},
            "resume": {"type": "string", "description": "the pos of the last event received: the server "
                                                        "replays what followed (first frame resumed) or says "
                                                        "it cannot (resume_failed)"},
        },
        "additionalProperties": {"type": "string"},
        "description": "The VK launch parameters (every vk_* and sign; or the Authorization header), "
                       "the profile (name, avatar) and an optional resume position.",
    }
    channel_messages = {event: {"$ref": f"#/components/messages/{event}"} for event in messages}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": f"{API_TITLE}: WebSocket", "version": API_VERSION,
                 "description": 'Frames are JSON text: {"event": "<name>", "data": {...}}, and events carry '
                                "a last member pos. Generated by server/apidoc.py; docs/API.md §3."},
        "defaultContentType": JSON,
        "servers": {"local": {"host": "127.0.0.1:8080", "protocol": "ws", "pathname": "/v1/ws",
                              "description": "the development server"}},
        "channels": {"socket": {
            "address": "/v1/ws", "messages": channel_messages,
            "bindings": {"ws": {"method": "GET", "query": query, "bindingVersion": "0.1.0"}},
        }},
        "operations": {
            "sendEvents": {
                "action": "send", "channel": {"$ref": "#/channels/socket"},
                "summary": "Events the server pushes to the socket",
                "messages": [{"$ref": f"#/channels/socket/messages/{event}"} for event in events],
            },
            "receivePing": {
                "action": "receive", "channel": {"$ref": "#/channels/socket"},
                "summary": "Keep-alive frames from the client",
                "messages": [{"$ref": "#/channels/socket/messages/ping"}],
            },
        },
        "components": {"messages": messages},
    }
