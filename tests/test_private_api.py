"""The private Tornado and redis-py methods the server calls, pinned by signature (requirements.txt pins both).

``WebSocketProtocol13._write_frame`` writes a pre-encoded frame without the
Task that ``write_message`` creates per call (most of the fan-out cost, see
docs/BENCHMARKS.md); ``RequestHandler._check_cross_origin`` is Tornado's own
Origin rule, asked before the handshake writes anything. redis-py's
``AbstractConnection._send_packed_command`` is the write that
storage/redis_client.py bounds with ``asyncio.timeout`` instead of the Task
per command that ``asyncio.wait_for`` costs. ``RedisCluster`` takes no
connection class, so storage/redis_cluster.py sets it on the seed nodes and in
the ``connection_kwargs`` the nodes it discovers are built from. An upgrade
that changes any of them must fail here, loudly, not in production.
"""

from __future__ import annotations

import inspect

import redis
import redis.asyncio.cluster
import redis.asyncio.connection
import tornado
import tornado.web
import tornado.websocket

from storage.redis_client import bounded_client


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


def test_redis_cluster_builds_its_nodes_from_connection_kwargs():
    client = bounded_client("redis+cluster://127.0.0.1:1,127.0.0.1:2", 1.0)  # connects to nothing yet
    chosen = client.connection_kwargs["connection_class"]
    assert chosen.__name__ == "BreakerConnection"
    for node in client.nodes_manager.startup_nodes.values():
        assert type(node.acquire_connection()) is chosen, (
            f"redis-py {redis.__version__} changed how RedisCluster builds its seed nodes: see storage/redis_cluster.py"
        )
    manager = client.nodes_manager
    assert manager.connection_kwargs is client.connection_kwargs, (
        f"redis-py {redis.__version__} no longer builds discovered nodes from connection_kwargs: see storage/redis_cluster.py"
    )
    discovered = redis.asyncio.cluster.ClusterNode("127.0.0.1", 3, **manager.connection_kwargs)
    assert type(discovered.acquire_connection()) is chosen
