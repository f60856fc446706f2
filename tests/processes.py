"""Killing a real process at a known point, for the tests that prove nothing half-written is trusted."""

import os
import signal
import subprocess
import time
from pathlib import Path


def sigkill_once_exists(process: subprocess.Popen, path: Path, timeout: float = 120) -> None:
    """SIGKILL `process` as soon as `path` exists (it gets no chance to clean up)."""
    try:
        deadline = time.time() + timeout
        while not path.exists():
            assert process.poll() is None, "the process exited before it was killed"
            assert time.time() < deadline, f"{path} never appeared"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
