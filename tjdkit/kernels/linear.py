"""The output layer's kernel on the CPU, chosen by measuring on the machine at hand.

For the few rows a decoding step has, `weight @ hidden^T` (one GEMM) and nn.Linear's own path
differ by 2x and more on a large vocabulary, in either direction depending on the CPU: on one
machine the GEMM ran Gemma 3's output layer 2x faster, on another 2.5x slower. So the first
time a layer is seen, both kernels run on 1, 4, 16 and 32 rows (interleaved, after a warm-up) and
the faster in total is kept: for the process, and in `<cache>/kernels.json` for the machine
(keyed by CPU, threads, torch version, dtype and shape), so later runs do not measure again.
`TJDKIT_OUTPUT_KERNEL=linear|matmul` forces one. Every tjdkit decoding path (ar, draft, verify,
TNOT) goes through `output_layer`, and `measured_output_kernel` puts the model's own forward (what
transformers' `generate` calls) through it too, so the modes a benchmark compares share the same
kernel; a joint head's decoder (a smaller vocabulary) gets its own measured choice when it drafts.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from typing import Iterator, Optional

import torch
from torch import Tensor

from tjdkit.kernels.store import machine_key, remembered_choice

KERNELS = ("linear", "matmul")
MAX_ROWS = 32  # more rows than this: nn.Linear (a real GEMM either way)
MEASURED_ROWS = (1, 4, 16, 32)  # ar steps, verify steps at H = 4, long drafts, a head's components
STORE = "kernels.json"

_chosen: dict[str, str] = {}  # this process's choices, by kernel_key


def output_layer(layer: torch.nn.Module, hidden: Tensor) -> Tensor:
    """hidden [n, D] -> layer(hidden) [n, V] with the kernel measured fastest for this layer on this CPU."""
    return _matmul(layer, hidden) if _takes_matmul(layer, hidden) else layer(hidden)


def _takes_matmul(layer: torch.nn.Module, hidden: Tensor) -> bool:
    """Whether these rows [n, D] go through `weight @ h^T`: a Linear on the CPU, few rows, measured faster."""
    return (
        isinstance(layer, torch.nn.Linear)
        and hidden.device.type == "cpu"
        and hidden.shape[0] <= MAX_ROWS
        and choose_kernel(layer) == "matmul"
    )


@contextlib.contextmanager
def measured_output_kernel(model) -> Iterator[None]:
    """While open, the model's own output layer (called by its forward, so by transformers' `generate`)
    runs on the kernel `output_layer` uses, so transformers' baselines in a benchmark are not timed on a
    kernel tjdkit's modes avoid (on one 2-core CPU, nn.Linear took 2x the time for a few rows)."""
    layer = model.get_output_embeddings()
    if not isinstance(layer, torch.nn.Linear) or "forward" in vars(layer):
        yield
        return
    own = layer.forward

    def forward(hidden: Tensor) -> Tensor:
        rows = hidden.reshape(-1, hidden.shape[-1])  # [B * T, D]
        if _takes_matmul(layer, rows):
            return _matmul(layer, rows).reshape(*hidden.shape[:-1], -1)
        return own(hidden)  # not output_layer: layer(hidden) would call this forward again

    layer.forward = forward
    try:
        yield
    finally:
        del layer.forward


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
        _chosen[key] = remembered_choice(STORE, key, KERNELS, lambda: measure_kernels(layer), MEASURED_ROWS)
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
        machine_key(), str(layer.weight.dtype).replace("torch.", ""), f"{rows}x{columns}", f"bias={layer.bias is not None}",
    ])


@torch.inference_mode()
def measure_kernels(layer: torch.nn.Linear, repeats: int = 3) -> dict[str, float]:
    """Milliseconds per kernel on random rows (`interleaved_ms`)."""
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(rows, layer.weight.shape[1], generator=generator) for rows in MEASURED_ROWS]
    kernels = {"linear": _linear, "matmul": _matmul}
    return interleaved_ms({kernel: (lambda hidden, run=run: run(layer, hidden)) for kernel, run in kernels.items()},
                          inputs, repeats)


def interleaved_ms(paths: dict, inputs: list, repeats: int = 3) -> dict[str, float]:
    """Milliseconds per path: the sum over `inputs` of the median of `repeats` timed calls after a
    warm-up, the paths interleaved so that drift in machine speed falls on all of them."""
    total = {name: 0.0 for name in paths}
    for hidden in inputs:
        for path in paths.values():  # warm-up
            path(hidden)
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(repeats):
            for name, path in paths.items():
                start = time.perf_counter()
                path(hidden)
                times[name].append(time.perf_counter() - start)
        for name in paths:
            total[name] += 1000 * statistics.median(times[name])
    return total
