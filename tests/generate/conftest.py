"""Stand-in OpenAI-compatible servers for the client backend's tests (no model behind them)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest


class _Models(BaseHTTPRequestHandler):
    """A stand-in server: /v1/models lists two models and wants the key ``right``."""

    def do_GET(self):
        if self.headers.get("Authorization") != "Bearer right":
            self._send(401, {"error": {"message": "Invalid API key", "code": 401}})
        else:
            self._send(200, {"object": "list", "data": [{"id": "base", "object": "model"}, {"id": "ct"}]})

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def models_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


class _Chat(_Models):
    """/v1/models as :class:`_Models`; every chat request is answered with ``reply`` (set by the test)
    and its body kept in ``bodies``."""

    reply = ""
    bodies: ClassVar[list[dict]] = []

    def do_POST(self):
        self.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": self.reply},
            "finish_reason": "stop",
        }
        usage = {"prompt_tokens": 9, "completion_tokens": 30, "total_tokens": 39}
        self._send(
            200, {"id": "x", "object": "chat.completion", "created": 0, "choices": [choice], "usage": usage}
        )


@pytest.fixture
def chat_server():
    """The chat stand-in's API root and its handler class (``reply`` to set, ``bodies`` to read)."""
    handler = type("Chat", (_Chat,), {"reply": "", "bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    server.shutdown()
