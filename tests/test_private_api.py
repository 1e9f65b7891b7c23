"""The private Tornado and redis-py methods the server calls, pinned by signature (requirements.txt pins both).

``WebSocketProtocol13._write_frame`` writes a pre-encoded frame without the
Task that ``write_message`` creates per call (most of the fan-out cost, see
docs/BENCHMARKS.md); ``RequestHandler._check_cross_origin`` is Tornado's own
Origin rule, asked before the handshake writes anything. redis-py's
``AbstractConnection._send_packed_command`` is the write that
storage/redis_client.py bounds with ``asyncio.timeout`` instead of the Task
per command that ``asyncio.wait_for`` costs. An upgrade that changes any of
them must fail here, loudly, not in production.
"""

from __future__ import annotations

import inspect

import redis
import redis.asyncio.connection
import tornado
import tornado.web
import tornado.websocket


def test_write_frame_keeps_its_signature():
    method = tornado.websocket.WebSocketProtocol13._write_frame
    assert list(inspect.signature(method).parameters) == ["self", "fin", "opcode", "data", "flags"], (
        f"Tornado {tornado.version} changed WebSocketProtocol13._write_frame: see handlers/websocket.py"
    )


def test_check_cross_origin_keeps_its_signature():
    method = tornado.web.RequestHandler._check_cross_origin
    assert list(inspect.signature(method).parameters) == ["self", "check"], (
        f"Tornado {tornado.version} changed RequestHandler._check_cross_origin: see handlers/websocket.py"
    )


def test_redis_send_packed_command_keeps_its_shape():
    connection = redis.asyncio.connection.AbstractConnection
    assert list(inspect.signature(connection._send_packed_command).parameters) == ["self", "command"], (
        f"redis-py {redis.__version__} changed AbstractConnection._send_packed_command: see storage/redis_client.py"
    )
    for name in ("is_connected", "health_check_interval", "disconnect"):
        assert hasattr(connection, name) or name in inspect.signature(connection.__init__).parameters, (
            f"redis-py {redis.__version__} no longer has AbstractConnection.{name}: see storage/redis_client.py"
        )
