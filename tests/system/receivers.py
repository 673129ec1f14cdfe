"""Real local receivers for the alert / report channels (imported by name: tests/ is on sys.path).

- ``webhook_receiver()``: an HTTP server (``ThreadingHTTPServer`` bound to port 0 by itself) that
  records every POST (path, content type, JSON body);
- ``smtp_receiver()``: a real SMTP server (aiosmtpd) on a socket bound to port 0 by the test and
  handed to the server, so no other process can take the port between "find" and "listen";
(``refused_port()``, a port that refuses connections, lives in ports.py.)
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.received.append(
            {"path": self.path, "content_type": self.headers.get("Content-Type"), "json": json.loads(body)}
        )
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextmanager
def webhook_receiver(path: str = "/hooks/sentiment") -> Iterator[tuple[str, list]]:
    """(url, received): every POST's ``{"path", "content_type", "json"}`` in arrival order."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    srv.received = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}{path}", srv.received
    finally:
        srv.shutdown()
        srv.server_close()


class _Mailbox:
    def __init__(self) -> None:
        self.mails: list[dict] = []

    async def handle_DATA(self, server, session, envelope):
        msg = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        body = msg.get_body(preferencelist=("plain",))
        self.mails.append(
            {
                "from": envelope.mail_from,
                "rcpt": list(envelope.rcpt_tos),
                "subject": str(msg["Subject"]),
                "to": str(msg["To"]),
                "body": body.get_content() if body is not None else "",
            }
        )
        return "250 Message accepted for delivery"


class _SocketController(Controller):
    """aiosmtpd's threaded controller serving a socket the test already bound (port 0)."""

    def __init__(self, handler, sock: socket.socket, **kwargs) -> None:
        self._sock = sock
        super().__init__(handler, hostname="127.0.0.1", port=sock.getsockname()[1], **kwargs)

    def _create_server(self):
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)


@contextmanager
def smtp_receiver() -> Iterator[tuple[int, list]]:
    """(port, mails): every message's ``{"from", "rcpt", "subject", "to", "body"}``."""
    sock = socket.create_server(("127.0.0.1", 0))
    box = _Mailbox()
    ctl = _SocketController(box, sock)
    ctl.start()
    try:
        yield ctl.port, box.mails
    finally:
        ctl.stop()
        sock.close()
