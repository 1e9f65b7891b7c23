"""Property: whatever a client sends, the answer is JSON below 500 and the server stays healthy.

Hypothesis generates well-formed HTTP/1.1 requests (what Tornado refuses
before any handler runs is documented in docs/API.md §1 and out of scope)
against every route: methods, paths with odd ids and escapes, query strings
of arbitrary bytes, headers, bodies (JSON with huge integers, lone
surrogates and deep nesting; forms; multipart junk; raw bytes), signed and
unsigned launch parameters. Requests are sent as raw bytes so no client
normalises them.
"""

from __future__ import annotations

import json
import os
import string
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.auth import sign_launch_params
from tests.helpers import ServerUnderTest, raw_request

pytestmark = pytest.mark.slow

# Per backend; about 3 ms each. CHAT_TEST_HYPOTHESIS_EXAMPLES changes it (a quick loop, a long soak).
EXAMPLES_PER_BACKEND = int(os.environ.get("CHAT_TEST_HYPOTHESIS_EXAMPLES", "6000"))
HEALTH_CHECK_EVERY = 100

ROUTES = [
    "/v1/messages/get", "/v1/messages/send", "/v1/conversations/get", "/v1/conversations/new",
    "/v1/conversations/join/{id}", "/v1/conversations/leave/{id}", "/v1/conversations/delete/{id}",
    "/v1/conversations/read/{id}", "/v1/conversations/view/{id}", "/v1/conversations/stopView/{id}",
    "/v1/conversations/info/{id}", "/v1/ws", "/v1/dev/signin", "/v1/{id}", "/{id}", "/index.html", "/",
]
PATH_SAFE = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/"
HEADER_NAMES = ["X-Socket-Id", "Origin", "Content-Type", "Accept", "Range", "If-None-Match", "If-Modified-Since",
                "Upgrade", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Cookie", "X-Anything", "Accept-Encoding",
                "Content-Encoding", "Expect", "Authorization"]
# Printable ASCII and Latin-1: what an HTTP header value may carry (CR, LF and other controls are not HTTP).
HEADER_VALUE_CHARS = st.characters(codec="latin-1", exclude_categories=("Cc",))

escaped_bytes = st.binary(max_size=12).map(lambda raw: urllib.parse.quote_from_bytes(raw, safe=""))
odd_ids = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["0", "-1", "1e3", "0x10", "１", "%ff", "%00", "..", "%2e%2e", "%2f", "", "9007199254740991",
                     "9007199254740992", "9223372036854775808", "%zz"]),
    st.text(PATH_SAFE, max_size=20),
    escaped_bytes,
)
lone_surrogates = st.sampled_from(["\ud800", "\udfff", "\udc00x"])
json_text = st.one_of(st.text(max_size=40), lone_surrogates, st.text(max_size=1200))
json_numbers = st.one_of(
    st.integers(-(2**80), 2**80), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
)
json_scalars = st.one_of(json_numbers, json_text, odd_ids)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                   st.dictionaries(json_text, inner, max_size=4)),
                           max_leaves=12)
FIELDS = ["text", "name", "conversation_id", "chat", "offset", "mode", "user_id"]
json_objects = st.dictionaries(st.one_of(st.sampled_from(FIELDS), json_text), json_values, max_size=5)


def _in_url(text: str) -> str:
    """Text as it may stand in a request target: ASCII, the rest %-escaped (existing escapes kept)."""
    return urllib.parse.quote(text, safe=PATH_SAFE + "%")


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


bodies = st.one_of(
    st.just(b""),
    json_objects.map(lambda value: json.dumps(value).encode()),  # ensure_ascii: surrogates as \ud800 escapes
    json_values.map(lambda value: json.dumps(value).encode()),
    st.integers(1, 3000).map(lambda depth: ('{"text": "x", "n": ' + _nested(depth) + "}").encode()),
    st.dictionaries(st.sampled_from(FIELDS), st.one_of(odd_ids, st.text(max_size=30)), max_size=4).map(
        lambda form: urllib.parse.urlencode(form).encode()),
    st.binary(max_size=300),
    st.sampled_from([b"--x\r\nContent-Disposition: form-data\r\n\r\n", b"{", b"{\"text\": 1e999}", b"\xff\xfe{}",
                     b'{"text": "' + b"a" * 70_000 + b'"}']),
)
content_types = st.one_of(st.none(), st.sampled_from([
    "application/json", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "multipart/form-data", "text/plain", "application/json; charset=latin-1",
]), st.text(HEADER_VALUE_CHARS, max_size=40))


@st.composite
def requests(draw, secret: str) -> tuple[str, str, dict[str, str], bytes]:
    method = draw(st.sampled_from(["GET", "POST", "DELETE", "OPTIONS", "PUT", "PATCH", "HEAD"]))
    path = draw(st.sampled_from(ROUTES)).replace("{id}", _in_url(draw(odd_ids)))
    if draw(st.booleans()):
        query = draw(st.lists(st.tuples(st.one_of(st.sampled_from(FIELDS), escaped_bytes),
                                        st.one_of(odd_ids, escaped_bytes)), max_size=4))
        path += "?" + "&".join(f"{_in_url(key)}={_in_url(value)}" for key, value in query)
    headers: dict[str, str] = {}
    auth = draw(st.sampled_from(["member", "signed-odd-user", "garbage", "none"]))
    if auth == "member":
        headers["Authorization"] = "VK " + sign_launch_params(secret, 1)
    elif auth == "signed-odd-user":
        headers["Authorization"] = "VK " + sign_launch_params(secret, draw(odd_ids))
    elif auth == "garbage":
        headers["Authorization"] = draw(st.text(HEADER_VALUE_CHARS, max_size=80))
    content_type = draw(content_types)
    if content_type is not None:
        headers["Content-Type"] = content_type
    for name in draw(st.lists(st.sampled_from(HEADER_NAMES), max_size=3, unique=True)):
        headers[name] = draw(st.one_of(st.text(HEADER_VALUE_CHARS, max_size=60),
                                       st.sampled_from(["bytes=5-1", "bytes=-0", "bytes=999999-", "websocket",
                                                        "13", "dGhlIHNhbXBsZSBub25jZQ==", "100-continue", "gzip"])))
    body = draw(bodies) if method not in ("GET", "HEAD") or draw(st.booleans()) else b""
    return method, path, headers, body


def _encode(method: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
    # "Connection: Upgrade" with the other handshake headers drawn can make a real WebSocket.
    connection = "Upgrade" if headers.get("Upgrade") == "websocket" else "close"
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", f"Connection: {connection}"]
    lines += [f"{name}: {value.strip()}" for name, value in headers.items() if value.strip()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _check(method: str, target: str, response) -> None:
    where = f"{method} {target[:120]}"
    assert response.status is not None, f"{where}: no answer: {response.body[:200]!r}"
    assert response.status < 500, f"{where}: {response.status} {response.body[:300]!r}"
    if response.status == 101 or method == "HEAD" or response.status in (204, 304):
        return  # a real upgrade, or an answer that has no body
    if response.status >= 400 or target.startswith("/v1/"):
        body = response.json()
        if response.status >= 400:
            code = body["error"]["code"]  # the status, or a route's own code 1-4 (docs/API.md §5)
            assert body["response"] is False and code in (response.status, 1, 2, 3, 4), (where, body)
        else:
            assert body["response"] is True, (where, body)


def test_any_request_gets_json_below_500(io_loop, server: ServerUnderTest, capsys):
    port = int(server.base_url.rsplit(":", 1)[1])
    member = server.user(1)
    io_loop.run_sync(member.connect)
    sent = 0

    async def healthy() -> None:
        assert (await member.get("/v1/messages/get?chat=0")).ok
        assert (await member.post("/v1/messages/send", {"text": "still here"})).ok

    @settings(max_examples=EXAMPLES_PER_BACKEND, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(requests(server.secret))
    def one_request(request) -> None:
        nonlocal sent
        method, target, headers, body = request
        response = io_loop.run_sync(lambda: raw_request(port, _encode(method, target, headers, body)), timeout=30)
        _check(method, target, response)
        sent += 1
        if sent % HEALTH_CHECK_EVERY == 0:
            io_loop.run_sync(healthy)

    one_request()
    io_loop.run_sync(healthy)
    with capsys.disabled():
        print(f"\n[hostile input] {sent} generated requests on {server.backend}: every answer JSON below 500")
