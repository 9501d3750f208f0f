"""A pooled connection the server closed while it sat idle (its keep-alive ran out just as the client
reused it) fails as the next request goes out. The SDK sends a request that may be sent twice once more,
on a new connection; any other request fails with ConnectionFailed, never sent a second time.

The server here is a plain socket that answers the first request of each connection, then resets the
connection when the second one arrives (what a server closing an idle connection looks like to the
client that wrote on it at that moment)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from opensci.client import Client, ConnectionFailed

REPLY = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"ok": true}'


class ResettingServer:
    """Answers the first request on each connection with 200; resets the connection at the second."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[tuple[int, bytes]] = []  # connection number, request line
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            count += 1
            threading.Thread(target=self._connection, args=(conn, count), daemon=True).start()

    def _connection(self, conn: socket.socket, number: int) -> None:
        with conn:
            data = b""
            for answered in (False, True):
                while b"\r\n\r\n" not in data:
                    more = conn.recv(65536)
                    if not more:
                        return
                    data += more
                head, _, data = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(data) < length:
                    data += conn.recv(65536)
                data = data[length:]
                with self.lock:
                    self.requests.append((number, head.split(b"\r\n")[0]))
                if answered:  # reset, as a server does when it closes a connection with unread input
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                conn.sendall(REPLY)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[ResettingServer]:
    s = ResettingServer()
    yield s
    s.close()


def test_an_idempotent_request_on_a_connection_the_server_dropped_is_sent_again(
    server: ResettingServer,
) -> None:
    with Client(server.url, token="") as client:
        assert client.request("GET", "/api/v1/first").json() == {"ok": True}
        assert client.request("GET", "/api/v1/second").json() == {"ok": True}
        assert client.request("DELETE", "/api/v1/third").json() == {"ok": True}
    assert server.requests == [
        (1, b"GET /api/v1/first HTTP/1.1"),
        (1, b"GET /api/v1/second HTTP/1.1"),  # reset: sent again on a new connection
        (2, b"GET /api/v1/second HTTP/1.1"),
        (2, b"DELETE /api/v1/third HTTP/1.1"),
        (3, b"DELETE /api/v1/third HTTP/1.1"),
    ]


def test_a_request_that_may_not_be_sent_twice_fails_and_is_not_sent_again(server: ResettingServer) -> None:
    with Client(server.url, token="") as client:
        client.request("GET", "/api/v1/first")
        with pytest.raises(ConnectionFailed, match="broke"):
            client.request("POST", "/api/v1/repos", json={"name": "x"})
        client.request("GET", "/api/v1/again")
        with pytest.raises(ConnectionFailed, match="broke"):
            client.request("PUT", "/api/v1/upload", content=iter([b"a stream ", b"read once"]))
    assert server.requests == [
        (1, b"GET /api/v1/first HTTP/1.1"),
        (1, b"POST /api/v1/repos HTTP/1.1"),
        (2, b"GET /api/v1/again HTTP/1.1"),
        (2, b"PUT /api/v1/upload HTTP/1.1"),
    ]
