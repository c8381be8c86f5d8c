"""A slow source without fakes: an adapter whose config file is a named pipe.

Reading the pipe blocks in the loader until the test writes the config, like a stalled
network filesystem. `wait_reader` returns once a loader has the file open, which proves
that load is running right now.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes


class FifoGate:
    def __init__(self, folder: Path, target: LoraTargetShapes, **adapter) -> None:
        write_random_adapter(folder, target, **adapter)
        self.path = folder / "adapter_config.json"
        self.config = self.path.read_bytes()
        self.path.unlink()
        os.mkfifo(self.path)
        self._fd: int | None = None

    def has_reader(self) -> bool:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as error:
                if error.errno != errno.ENXIO:
                    raise
        return self._fd is not None

    def wait_reader(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.has_reader():
            if time.monotonic() > deadline:
                raise AssertionError(f"nobody opened {self.path} within {timeout}s")
            time.sleep(0.005)

    def release(self) -> None:
        """Let the blocked load read the config."""
        self.wait_reader()
        os.write(self._fd, self.config)
        self.close()

    def close(self) -> None:
        """Unblock any reader (it sees an empty file) so no worker thread hangs."""
        self.has_reader()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
