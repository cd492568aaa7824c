"""A TCP proxy on loopback in front of the tests' S3 server that a test can take away and bring back.

moto keeps its objects in memory, so an outage cannot be made by restarting it. The proxy makes the two
outages a client meets: `refuse()` closes the listening socket (connections are refused, as when a
service is down) and `hang()` keeps accepting but never answers (as when a network path black-holes);
both also cut the connections already open. `restore()` listens again on the same port and forwards.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from fsg_ray.ray.cluster import free_port


class OutageProxy:
    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.mode = "up"
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._listen()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by refuse() or close()
                return
            with self._lock:
                self._sockets.append(client)
                if self.mode == "hang":
                    continue  # held open, never read or answered
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _cut_connections(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def refuse(self) -> None:
        """Connections are refused from now on: nothing listens on the port."""
        self.mode = "refuse"
        self._listener.close()
        self._cut_connections()

    def hang(self) -> None:
        """Connections are accepted and never answered; open ones are cut."""
        self.mode = "hang"
        self._cut_connections()

    def restore(self) -> None:
        if self.mode == "refuse":
            self._listen()
        self.mode = "up"
        self._cut_connections()  # held (hung) connections end; clients reconnect

    def close(self) -> None:
        self._listener.close()
        self._cut_connections()


@contextmanager
def outage_proxy(s3_endpoint: str) -> Iterator[OutageProxy]:
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = OutageProxy(host, int(port))
    try:
        yield proxy
    finally:
        proxy.close()
