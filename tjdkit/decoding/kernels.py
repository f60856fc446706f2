"""The output layer's kernel on the CPU, chosen by measuring on the machine at hand.

For the few rows a decoding step has, `weight @ hidden^T` (one GEMM) and nn.Linear's own path
differ by 2x and more on a large vocabulary, in either direction depending on the CPU: on one
machine the GEMM ran Gemma 3's output layer 2x faster, on another 2.5x slower. So the first
time a layer is seen, both kernels run on 1, 4 and 16 rows (interleaved, after a warm-up) and
the faster in total is kept: for the process, and in `<cache>/kernels.json` for the machine
(keyed by CPU, threads, torch version, dtype and shape), so later runs do not measure again.
`TJDKIT_OUTPUT_KERNEL=linear|matmul` forces one. Every tjdkit decoding path (ar, draft, verify,
TNOT) goes through `output_layer`, so the modes a benchmark compares share the same kernel.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import time
from typing import Optional

import torch
from torch import Tensor

KERNELS = ("linear", "matmul")
MAX_ROWS = 16  # more rows than this: nn.Linear (a real GEMM either way)
MEASURED_ROWS = (1, 4, 16)  # ar steps, verify steps at H = 4, long drafts
STORE = "kernels.json"

_chosen: dict[str, str] = {}  # this process's choices, by kernel_key


def output_layer(layer: torch.nn.Module, hidden: Tensor) -> Tensor:
    """hidden [n, D] -> layer(hidden) [n, V] with the kernel measured fastest for this layer on this CPU."""
    if (
        isinstance(layer, torch.nn.Linear)
        and hidden.device.type == "cpu"
        and hidden.shape[0] <= MAX_ROWS
        and choose_kernel(layer) == "matmul"
    ):
        return _matmul(layer, hidden)
    return layer(hidden)


def _matmul(layer: torch.nn.Linear, hidden: Tensor) -> Tensor:
    """weight @ hidden^T; a single row is padded to two, where the matrix-vector path is slower."""
    n = hidden.shape[0]
    x = hidden.to(layer.weight.dtype)
    if n == 1:
        x = torch.cat([x, torch.zeros_like(x)])
    logits = (layer.weight @ x.T).T[:n]  # [n, V]
    return logits + layer.bias if layer.bias is not None else logits


def _linear(layer: torch.nn.Linear, hidden: Tensor) -> Tensor:
    return layer(hidden.to(layer.weight.dtype))


def _forced() -> Optional[str]:
    forced = os.environ.get("TJDKIT_OUTPUT_KERNEL", "").strip().lower()
    return forced if forced in KERNELS else None


def choose_kernel(layer: torch.nn.Linear) -> str:
    """"linear" or "matmul" for this layer: forced by the environment, remembered, or measured now."""
    if _forced():
        return _forced()
    key = kernel_key(layer)
    if key not in _chosen:
        stored = _read_store().get(key, {})
        if isinstance(stored, dict) and stored.get("kernel") in KERNELS:
            _chosen[key] = stored["kernel"]
        else:
            milliseconds = measure_kernels(layer)
            _chosen[key] = min(KERNELS, key=lambda kernel: milliseconds[kernel])
            _write_store(key, {"kernel": _chosen[key], "ms": milliseconds, "rows": list(MEASURED_ROWS)})
    return _chosen[key]


def chosen_kernel(layer: torch.nn.Module) -> Optional[str]:
    """The kernel this process uses for `layer`, if one was chosen (for reports); never measures."""
    if _forced():
        return _forced()
    return _chosen.get(kernel_key(layer)) if isinstance(layer, torch.nn.Linear) else None


def kernel_key(layer: torch.nn.Linear) -> str:
    """What a measurement holds for: the CPU, threads, torch, and the layer's dtype and shape."""
    rows, columns = layer.weight.shape
    return "|".join([
        _cpu_name(), f"threads={torch.get_num_threads()}", f"torch={torch.__version__}",
        str(layer.weight.dtype).replace("torch.", ""), f"{rows}x{columns}", f"bias={layer.bias is not None}",
    ])


@torch.inference_mode()
def measure_kernels(layer: torch.nn.Linear, repeats: int = 3) -> dict[str, float]:
    """Milliseconds per kernel: the sum over MEASURED_ROWS of the median of `repeats` timed calls,
    the kernels interleaved so that drift in machine speed falls on both."""
    kernels = {"linear": _linear, "matmul": _matmul}
    total = {kernel: 0.0 for kernel in KERNELS}
    generator = torch.Generator().manual_seed(0)
    for rows in MEASURED_ROWS:
        hidden = torch.randn(rows, layer.weight.shape[1], generator=generator)
        for kernel in KERNELS:  # warm-up
            kernels[kernel](layer, hidden)
        times: dict[str, list[float]] = {kernel: [] for kernel in KERNELS}
        for _ in range(repeats):
            for kernel in KERNELS:
                start = time.perf_counter()
                kernels[kernel](layer, hidden)
                times[kernel].append(time.perf_counter() - start)
        for kernel in KERNELS:
            total[kernel] += 1000 * statistics.median(times[kernel])
    return total


@functools.lru_cache(maxsize=1)
def _cpu_name() -> str:
    """Read once: kernel_key runs on every decoding step."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _store_path():
    from tjdkit.fileio import cache_root

    return cache_root() / STORE


def _read_store() -> dict:
    try:
        data = json.loads(_store_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_store(key: str, entry: dict) -> None:
    """Remember a measurement for later processes; a cache that cannot be written only costs a re-measure."""
    from tjdkit.errors import TjdkitError
    from tjdkit.fileio import atomic_write_text

    data = _read_store()
    data[key] = entry
    try:
        atomic_write_text(_store_path(), json.dumps(data, indent=2, sort_keys=True) + "\n")
    except (OSError, TjdkitError):  # read-only or full disk (fileio reports those as TjdkitError)
        pass
