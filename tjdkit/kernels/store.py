"""Where measurements of this machine are kept (`<cache>/<name>.json`, one entry per key), so a
choice made by measuring is made once per machine, not once per process. A cache that cannot be
read or written only costs a new measurement."""

from __future__ import annotations

import functools
import json
import platform

import torch


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """Read once: keys are built on every decoding step."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def machine_key() -> str:
    """What every measurement depends on: the CPU, the threads torch uses, and torch itself."""
    return "|".join([cpu_name(), f"threads={torch.get_num_threads()}", f"torch={torch.__version__}"])


def _path(name: str):
    from tjdkit.fileio import cache_root

    return cache_root() / name


def read_store(name: str) -> dict:
    try:
        data = json.loads(_path(name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_store(name: str, key: str, entry: dict) -> None:
    from tjdkit.errors import TjdkitError
    from tjdkit.fileio import atomic_write_text

    data = read_store(name)
    data[key] = entry
    try:
        atomic_write_text(_path(name), json.dumps(data, indent=2, sort_keys=True) + "\n")
    except (OSError, TjdkitError):  # read-only or full disk (fileio reports those as TjdkitError)
        pass


def remembered_choice(name: str, key: str, choices, measure, rows) -> str:
    """The choice stored for `key` in `<cache>/<name>`, else the fastest of `measure()` ({choice:
    milliseconds} over `rows` rows), stored with its timings for the next process."""
    stored = read_store(name).get(key, {})
    if isinstance(stored, dict) and stored.get("kernel") in choices:
        return stored["kernel"]
    milliseconds = measure()
    choice = min(milliseconds, key=milliseconds.get)
    write_store(name, key, {"kernel": choice, "ms": milliseconds, "rows": list(rows)})
    return choice
