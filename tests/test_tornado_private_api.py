"""The two private Tornado methods the server calls, pinned by signature (requirements.txt pins Tornado).

``WebSocketProtocol13._write_frame`` writes a pre-encoded frame without the
Task that ``write_message`` creates per call (most of the fan-out cost, see
docs/BENCHMARKS.md); ``RequestHandler._check_cross_origin`` is Tornado's own
Origin rule, asked before the handshake writes anything. A Tornado upgrade
that changes either must fail here, loudly, not in production.
"""

from __future__ import annotations

import inspect

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
