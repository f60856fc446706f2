"""How long a forward of n tokens takes on this machine, and the draft length that pays most.

Verification feeds 1 + k tokens per forward. Whether k = 10 beats k = 3 depends on how the
forward's time grows with the tokens fed, which differs by machine and weight format: float32
on a 2-core AVX2 CPU took 75 ms for 1 token and 169 ms for 16, int8 weights 31 and 57 ms; a GPU
is nearly flat. So the curve is measured once per machine and model (KV-cached forwards after a
64-token context, the median of a few interleaved runs, in `<cache>/forward_costs.json`), and
the draft length maximises expected tokens per second: with each draft token accepted with
probability a after the previous one was, k drafts give 1 + a + ... + a^k tokens in cost(1 + k).
"""

from __future__ import annotations

import statistics
import time

import torch

from tjdkit.kernels.store import machine_key, read_store, write_store

STORE = "forward_costs.json"
SIZES = (1, 2, 4, 8, 12, 16, 24, 32)  # tokens per forward measured; others are interpolated
CONTEXT = 64  # tokens already in the cache when a cost is measured

_costs: dict[str, dict[int, float]] = {}  # this process's curves, by cost_key


def cost_key(model) -> str:
    """A curve holds for the machine, the model's shape, its weight format and the device."""
    config = model.config.get_text_config()
    parameter = next(model.parameters())
    shape = "x".join(str(getattr(config, name, "?")) for name in ("num_hidden_layers", "hidden_size", "vocab_size"))
    weights = getattr(model, "tjdkit_weights", None) or str(parameter.dtype)  # set by tjdkit.models.quantize
    return "|".join([machine_key(), type(model).__name__, shape, weights, str(parameter.device)])


def forward_costs(model) -> dict[int, float]:
    """{tokens fed: milliseconds} for SIZES: remembered, read from the cache, or measured now."""
    key = cost_key(model)
    if key not in _costs:
        stored = read_store(STORE).get(key, {})
        curve = {int(n): float(ms) for n, ms in stored.get("ms", {}).items()} if isinstance(stored, dict) else {}
        if set(curve) != set(SIZES) or not all(ms > 0 for ms in curve.values()):
            curve = measure_forward_costs(model)
            write_store(STORE, key, {"ms": {str(n): ms for n, ms in curve.items()}})
        _costs[key] = curve
    return _costs[key]


@torch.inference_mode()
def measure_forward_costs(model, repeats: int = 3) -> dict[int, float]:
    """Median milliseconds of a KV-cached forward of n tokens after CONTEXT tokens, n in SIZES."""
    from tjdkit.decoding.context import context_length
    from tjdkit.decoding.forward import hidden_and_logits, new_cache

    device = next(model.parameters()).device
    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(0)
    context = min(CONTEXT, (context_length(model) or 4096) - max(SIZES))
    cache = new_cache(model)
    hidden_and_logits(model, torch.randint(vocab, (1, context), generator=generator).to(device), cache, last_only=True)
    if hasattr(cache, "activate_past_recording"):
        cache.activate_past_recording()
    times: dict[int, list[float]] = {n: [] for n in SIZES}
    for round_ in range(repeats + 1):  # round 0 warms up
        for n in SIZES:
            feed = torch.randint(vocab, (1, n), generator=generator).to(device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            hidden_and_logits(model, feed, cache)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_:
                times[n].append(1000 * (time.perf_counter() - start))
            cache.crop(-n)
    return {n: statistics.median(values) for n, values in times.items()}


def cost_at(curve: dict[int, float], n: int) -> float:
    """Milliseconds for n tokens: linear between measured sizes, extended by the last slope beyond them."""
    sizes = sorted(curve)
    if n in curve:
        return curve[n]
    if n < sizes[0]:
        return curve[sizes[0]]
    lower = max(size for size in sizes if size < n)
    upper = next((size for size in sizes if size > n), None)
    if upper is None:
        lower, upper = sizes[-2], sizes[-1]
    slope = (curve[upper] - curve[lower]) / (upper - lower)
    return curve[lower] + slope * (n - lower)


def expected_rate(curve: dict[int, float], accept: float, drafts: int) -> float:
    """Expected tokens per millisecond of a step that verifies `drafts` drafts: (1 + a + ... + a^k) / cost(1 + k)."""
    a = min(max(accept, 0.0), 1.0)
    return sum(a**i for i in range(drafts + 1)) / cost_at(curve, 1 + drafts)


def best_draft_length(curve: dict[int, float], accept: float, limit: int) -> int:
    """The k in 1..limit with the most expected tokens per millisecond (the smallest on a tie); 0 when limit < 1."""
    if limit < 1:
        return 0
    return max(range(1, limit + 1), key=lambda k: expected_rate(curve, accept, k))


class AcceptanceRate:
    """The running chance that a draft token is accepted once the one before it was: the
    accepted drafts over the drafts tried (each step tries its accepted drafts and, when it
    stopped early, the one rejected). Starts from a prior worth a few tries."""

    def __init__(self, prior: float = 0.5, weight: float = 4.0):
        self.accepted = prior * weight
        self.tried = weight

    def update(self, accepted: int, offered: int) -> None:
        self.accepted += accepted
        self.tried += accepted + (1 if accepted < offered else 0)

    @property
    def rate(self) -> float:
        return self.accepted / self.tried
