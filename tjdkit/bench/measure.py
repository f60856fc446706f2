"""What a decoding run costs beyond its time: peak memory, model forwards, the machine it ran on."""

from __future__ import annotations

import os
import platform
import threading
import time
from typing import Optional

import torch

from tjdkit.kernels import chosen_kernel
from tjdkit.kernels.argmax import chosen as chosen_argmax
from tjdkit.models.quantize import weight_format


class PeakMemory:
    """Peak memory while a block runs: CUDA's allocator peak on a GPU, else the process's
    resident set size sampled every few milliseconds (Linux), else its lifetime peak."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            import resource

            scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_bytes = max(self.peak_bytes, self._rss())

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_bytes = self._rss()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self._rss())


class ForwardCounter:
    """Counts the backbone's forward calls, whoever makes them (tjdkit or transformers' generate). The
    forwards that feed the first `prompt_length` tokens count as one, however many chunks the prompt
    was fed in (chunked prefill), so tokens per forward means the same in every mode.

    `prompt_done_at`: perf_counter when the forward that fed the prompt's last token returned, so a run
    splits into its prefill, which every mode pays alike, and its decoding, which the modes differ in."""

    def __init__(self, model, prompt_length: int = 0):
        self.count = 0
        self.prompt_length = self.prompt_left = prompt_length  # prompt_left: prompt tokens not fed yet
        self.prompt_done_at: Optional[float] = None
        self._device = next(model.parameters()).device
        self._handles = [
            model.base_model.register_forward_pre_hook(self._before, with_kwargs=True),
            model.base_model.register_forward_hook(self._after),
        ]

    def _before(self, _module, args, kwargs) -> None:
        continues_prefill = 0 < self.prompt_left < self.prompt_length  # a later chunk of the prompt
        self.count += not continues_prefill
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.prompt_left -= ids.shape[-1] if ids is not None else self.prompt_left

    def _after(self, *_) -> None:
        if self.prompt_done_at is None and self.prompt_left <= 0:
            if self._device.type == "cuda":
                torch.cuda.synchronize(self._device)
            self.prompt_done_at = time.perf_counter()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def environment(model) -> dict:
    """What the numbers were measured on."""
    import transformers

    device = next(model.parameters()).device
    info = {
        "device": str(device),
        "dtype": weight_format(model),  # fp16-weights for a quantised model
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "output_layer_kernel": chosen_kernel(model.get_output_embeddings()),  # measured on this machine
        # tjdkit's greedy modes: "screen" when their argmax goes through the int8 screen (transformers' never do)
        "greedy_argmax": chosen_argmax(model.get_output_embeddings()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info

