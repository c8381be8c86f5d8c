"""A TCP endpoint that accepts connections and never answers: a hung S3 or hub server.

Used as `AWS_ENDPOINT_URL` (or `HF_ENDPOINT`): a client connects at once, sends its
request and then waits for a reply that never comes, exactly as with a stalled storage
backend. Closing it closes every connection, so the waiting clients fail at once.
"""

from __future__ import annotations

import socket
import threading


class HungEndpoint:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self._listener = socket.create_server((host, 0))
        self.url = f"http://{host}:{self._listener.getsockname()[1]}"
        self._accepted: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def num_connections(self) -> int:
        with self._lock:
            return len(self._accepted)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                self._accepted.append(connection)

    def __enter__(self) -> HungEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._listener.close()
        with self._lock:
            for connection in self._accepted:
                connection.close()
        self._thread.join(5)
