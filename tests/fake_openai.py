"""A scriptable OpenAI-compatible HTTP server for fault tests (a stand-in for vLLM & co).

It is a real HTTP server on 127.0.0.1 (stdlib ``http.server`` in a thread):
the client code under test talks to it over sockets exactly as to vLLM.  A
test sets ``server.respond`` = a function of the parsed request body that
returns a ``Response`` (status, JSON body, headers, delay), and reads
``server.bodies`` (every request received, in order) to count calls.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass
class Response:
    status: int = 200
    body: dict | None = None
    headers: dict = field(default_factory=dict)
    delay_s: float = 0.0
    raw: bytes | None = None  # sent as it is instead of ``body`` (a broken proxy's HTML, a cut-off body)


def chat(text: str, finish_reason: str = "stop", logprobs: list[dict] | None = None) -> Response:
    """A 200 chat-completions answer carrying ``text``."""
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs}
    return Response(200, {"id": "x", "object": "chat.completion", "choices": [choice]})


def user_text(body: dict) -> str:
    """The question text of a request (the last text part of the user message)."""
    parts = body["messages"][-1]["content"]
    return [p["text"] for p in parts if p.get("type") == "text"][-1]


class FakeOpenAI:
    """``with FakeOpenAI(respond) as srv: srv.url`` -> ``http://127.0.0.1:<port>/v1``."""

    def __init__(self, respond: Callable[[dict], Response]):
        self.respond = respond
        self.bodies: list[dict] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                n = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(n) or b"{}")
                with outer._lock:
                    outer.bodies.append(body)
                resp = outer.respond(body)
                if resp.delay_s:
                    time.sleep(resp.delay_s)
                data = resp.raw if resp.raw is not None else json.dumps(
                    resp.body or {"error": {"message": f"status {resp.status}"}}).encode()
                try:
                    self.send_response(resp.status)
                    for k, v in resp.headers.items():
                        self.send_header(k, v)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Shut the server down (the endpoint 'dies': later requests cannot connect)."""
        self.httpd.shutdown()
        self.httpd.server_close()

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        except OSError:
            pass
