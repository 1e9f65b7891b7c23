"""VK launch parameters: the signature algorithm, HTTP and WebSocket authentication."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

from server.auth import compute_sign, sign_launch_params, verify_launch_params
from server.errors import NotAuthenticated
from tests.helpers import ServerUnderTest

ROOT = Path(__file__).resolve().parent.parent

VK_EXAMPLE_QUERY = (
    "vk_user_id=494075&vk_app_id=6736218&vk_is_app_user=1&vk_are_notifications_enabled=1"
    "&vk_language=ru&vk_access_token_settings=&vk_platform=android"
)
VK_EXAMPLE_SECRET = "wvl68m4dR1UpLrVRli"
VK_EXAMPLE_SIGN = "htQFduJpLxz7ribXRZpDFUH-XEUhC9rBPTJkjUFEkRA"


def test_vk_official_test_vector():
    pairs = urllib.parse.parse_qsl(VK_EXAMPLE_QUERY, keep_blank_values=True)
    assert compute_sign(pairs, VK_EXAMPLE_SECRET) == VK_EXAMPLE_SIGN
    user = verify_launch_params(f"{VK_EXAMPLE_QUERY}&sign={VK_EXAMPLE_SIGN}", VK_EXAMPLE_SECRET)
    assert user.user_id == 494075


def test_non_vk_parameters_are_not_signed():
    signed = f"{VK_EXAMPLE_QUERY}&sign={VK_EXAMPLE_SIGN}&name=Bob&utm=1"
    assert verify_launch_params(signed, VK_EXAMPLE_SECRET).user_id == 494075


@pytest.mark.parametrize(
    "query",
    [
        "",
        VK_EXAMPLE_QUERY,  # no sign
        f"{VK_EXAMPLE_QUERY}&sign=",
        f"{VK_EXAMPLE_QUERY}&sign={VK_EXAMPLE_SIGN[:-1]}B",
        f"{VK_EXAMPLE_QUERY.replace('494075', '494076')}&sign={VK_EXAMPLE_SIGN}",
        f"{VK_EXAMPLE_QUERY}&vk_extra=1&sign={VK_EXAMPLE_SIGN}",
        f"{VK_EXAMPLE_QUERY}&vk_user_id=1&sign={VK_EXAMPLE_SIGN}",
    ],
)
def test_bad_launch_parameters_are_refused(query):
    with pytest.raises(NotAuthenticated):
        verify_launch_params(query, VK_EXAMPLE_SECRET)


@pytest.mark.parametrize("user_id", ["0", "-5", "abc", ""])
def test_user_id_must_be_positive(user_id):
    params = {"vk_user_id": user_id, "vk_app_id": "1"}
    params["sign"] = compute_sign(params.items(), "s")
    with pytest.raises(NotAuthenticated):
        verify_launch_params(urllib.parse.urlencode(params), "s")


def test_max_age():
    fresh = sign_launch_params("s", 5)
    assert verify_launch_params(fresh, "s", max_age_secs=60).user_id == 5
    stale = sign_launch_params("s", 5, vk_ts=str(int(time.time()) - 3600))
    assert verify_launch_params(stale, "s").user_id == 5
    with pytest.raises(NotAuthenticated):
        verify_launch_params(stale, "s", max_age_secs=60)


def test_sign_command_prints_parameters_the_server_accepts(tmp_path):
    env = {"CHAT_VK_SECRET": "cli-secret", "CHAT_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    output = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "sign", "--user-id", "42"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert verify_launch_params(output, "cli-secret").user_id == 42


def test_sign_command_uses_the_generated_secret(tmp_path):
    env = {"CHAT_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    run = lambda: subprocess.run(  # noqa: E731
        [sys.executable, str(ROOT / "run.py"), "sign", "--user-id", "7"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    first, second = run(), run()
    secret = (tmp_path / "vk_secret").read_text().strip()
    assert verify_launch_params(first, secret).user_id == 7
    assert verify_launch_params(second, secret).user_id == 7


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer abc"},
        {"Authorization": "VK "},
        {"Authorization": "VK vk_user_id=1&sign=forged"},
    ],
)
async def test_http_requires_valid_launch_parameters(server: ServerUnderTest, headers):
    user = server.user(1)
    response = await user.call("GET", "/v1/messages/get?chat=0", auth=False, headers=headers)
    assert (response.status, response.error_code) == (401, 401)
    response = await user.call("POST", "/v1/messages/send", {"text": ""}, auth=False, headers=headers)
    assert (response.status, response.error_code) == (401, 401)


@pytest.mark.gen_test
async def test_http_signed_with_another_secret_is_refused(server: ServerUnderTest):
    forged = sign_launch_params("not-the-secret", 1)
    response = await server.user(1).call("GET", "/v1/conversations/get", auth=False,
                                          headers={"Authorization": f"VK {forged}"})
    assert (response.status, response.error_code) == (401, 401)


@pytest.mark.gen_test
@pytest.mark.parametrize("query", ["", "vk_user_id=1&sign=forged", "REPLACE"])
async def test_websocket_handshake_requires_valid_launch_parameters(server: ServerUnderTest, query):
    if query == "REPLACE":
        query = sign_launch_params("not-the-secret", 1)
    with pytest.raises(HTTPClientError) as error:
        await websocket_connect(f"{server.ws_url}/v1/ws?{query}")
    assert error.value.code == 401
    assert server.registry.size()["sockets"] == 0


@pytest.mark.gen_test
async def test_websocket_accepts_the_authorization_header(server: ServerUnderTest):
    from tornado.httpclient import HTTPRequest

    user = server.user(3)
    request = HTTPRequest(f"{server.ws_url}/v1/ws", headers={"Authorization": f"VK {user.launch}"})
    connection = await websocket_connect(request)
    frame = await connection.read_message()
    assert '"user_id":3' in frame
    connection.close()


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "extra, param",
    [("name=", None), ("name=" + "x" * 101, "name"), ("avatar=javascript:alert(1)", "avatar"),
     ("avatar=https://a/" + "x" * 500, "avatar")],
)
async def test_websocket_profile_is_validated(server: ServerUnderTest, extra, param):
    user = server.user(4)
    url = f"{server.ws_url}/v1/ws?{user.launch}&{extra}"
    if param is None:
        connection = await websocket_connect(url)
        assert '"connected"' in await connection.read_message()
        connection.close()
        return
    with pytest.raises(HTTPClientError) as error:
        await websocket_connect(url)
    assert error.value.code == 400


@pytest.mark.gen_test
async def test_profile_latest_wins_and_defaults(server: ServerUnderTest):
    alice = server.user(11)
    first = await alice.connect()
    conversation_id = await alice.create("profiles")
    info = (await alice.get(f"/v1/conversations/info/{conversation_id}")).body["conversation"]
    assert info["users"] == [{"user_id": 11, "name": "id11", "avatar": ""}]
    first.close()
    await alice.connect(name="Alice", avatar="https://a.example/new.png")
    info = (await alice.get(f"/v1/conversations/info/{conversation_id}")).body["conversation"]
    assert info["users"] == [{"user_id": 11, "name": "Alice", "avatar": "https://a.example/new.png"}]
    # A launch without a profile keeps the stored one.
    await alice.connect()
    info = (await alice.get(f"/v1/conversations/info/{conversation_id}")).body["conversation"]
    assert info["users"][0]["name"] == "Alice"
