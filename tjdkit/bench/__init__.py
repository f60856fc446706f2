"""Decoding speed, measured honestly: ar, draft and verify beside transformers' plain and
prompt-lookup decoding, interleaved in one process, with the head bench trains once and caches.

    result = run_bench(model, tokenizer, head, prompts, modes=("ar", "verify"))

Names load on first use, so the CLI reads the mode names (`bench.modes`) without torch.
"""

from tjdkit.bench.modes import BENCH_MODES, DEFAULT_MODES, LOSSLESS, NEEDS_HEAD, PLAIN

_NAMES = {
    "bench_recipe": "heads", "head_cache_dir": "heads", "resolve_head_run": "heads",
    "ForwardCounter": "measure", "PeakMemory": "measure", "environment": "measure",
    "LOOKUP_TOKENS": "run", "bench_prompts": "run", "file_prompts": "run", "read_prompts_file": "run",
    "run_bench": "run", "speedups": "run",
}

__all__ = ["BENCH_MODES", "DEFAULT_MODES", "LOSSLESS", "NEEDS_HEAD", "PLAIN", *sorted(_NAMES)]


def __getattr__(name):
    if name in _NAMES:
        import importlib

        return getattr(importlib.import_module(f"tjdkit.bench.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'tjdkit.bench' has no attribute {name!r}")
