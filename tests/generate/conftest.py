"""A stand-in OpenAI-compatible server for the client backend's tests (no model behind it)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
