"""How long a verification step takes on this machine, and the drafts that pay most.

A step feeds 1 + k tokens through the layers, then the output layer on the rows it reads.
On a large vocabulary the output layer is most of the cost (Gemma 3 270M, 262k tokens, 2-core
AVX2 CPU, fp16-weights: 18 ms for 1 row and 148 ms for 32, against 34 and 100 ms for the
layers), and the rows after the first rejected draft are never read, so verify computes them
in chunks as acceptance reaches them (tjdkit.decoding.forward.LazyLogits). Whether k = 10
beats k = 3 then depends on both curves, which differ by machine and weight format, so both
are measured once per machine and model (KV-cached forwards after a 64-token context, the
fastest of a few interleaved runs: load only ever adds time; in `<cache>/forward_costs.json`).

Acceptance is tracked per draft position (`AcceptanceProfile`): a copy that held for three
tokens is likelier to hold for a fourth than the first was to hold at all, so a single rate
would cut long copies short. With reach(j) the chance that the first j drafts all hold, k
drafts give 1 + reach(1) + ... + reach(k) tokens for layers(1 + k) plus the output chunks
each reached with the chance that its first row is read.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import torch

from tjdkit.kernels.store import machine_key, read_store, write_store

STORE = "forward_costs.json"
SIZES = (1, 2, 4, 8, 12, 16, 24, 32)  # tokens (or output rows) measured; others are interpolated
CONTEXT = 64  # tokens already in the cache when a cost is measured
PATTERN = 16  # the context repeats this many random tokens
LARGEST = 64  # tokens a step feeds at most: a tree of the root, a copy of 31 and the head's branches
CHUNK_WIDTHS = (1, 2, 4, 8, 16, 32)  # first output chunks tried; later chunks double

_costs: dict[str, "ForwardCosts"] = {}  # this process's curves, by cost_key


@dataclass(frozen=True)
class ForwardCosts:
    """Milliseconds by size: `layers[n]` for a forward of n tokens up to the final norm,
    `output[n]` for the output layer on n rows."""

    layers: dict[int, float]
    output: dict[int, float]
    _table: dict = field(default_factory=dict, compare=False, repr=False)

    def layers_ms(self, n: int) -> float:
        return self._lookup("layers", n)

    def output_ms(self, n: int) -> float:
        return self._lookup("output", n)

    def _lookup(self, part: str, n: int) -> float:
        table = self._table.get(part)
        if table is None:  # interpolated once: the planner asks for these sizes on every step
            curve = getattr(self, part)
            table = self._table[part] = [0.0] + [interpolate(curve, size) for size in range(1, LARGEST + 1)]
        return table[n] if 0 < n <= LARGEST else interpolate(getattr(self, part), n)

    def to_dict(self) -> dict:
        return {part: {str(n): ms for n, ms in getattr(self, part).items()} for part in ("layers", "output")}

    @classmethod
    def from_dict(cls, data) -> "ForwardCosts | None":
        """A stored entry, or None when it is missing, from an older layout or not positive."""
        try:
            parts = {part: {int(n): float(ms) for n, ms in data[part].items()} for part in ("layers", "output")}
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        if any(set(curve) != set(SIZES) or not all(ms > 0 for ms in curve.values()) for curve in parts.values()):
            return None
        return cls(**parts)


def cost_key(model, argmax_only: bool = False) -> str:
    """A curve holds for the machine, the model's shape, its weight format and the device, and for
    whether a step reads the logits or only their argmax (which may take the int8 screen)."""
    from tjdkit.decoding.forward import screens_argmax

    config = model.config.get_text_config()
    parameter = next(model.parameters())
    shape = "x".join(str(getattr(config, name, "?")) for name in ("num_hidden_layers", "hidden_size", "vocab_size"))
    weights = getattr(model, "tjdkit_weights", None) or str(parameter.dtype)  # set by tjdkit.models.quantize
    parts = [machine_key(), type(model).__name__, shape, weights, str(parameter.device)]
    return "|".join(parts + (["argmax"] if argmax_only and screens_argmax(model) else []))


def forward_costs(model, argmax_only: bool = False) -> ForwardCosts:
    """The model's cost curves: remembered, read from the cache, or measured now. argmax_only: the
    output curve of a step that reads only each row's argmax (greedy without a penalty)."""
    key = cost_key(model, argmax_only)
    if key not in _costs:
        costs = ForwardCosts.from_dict(read_store(STORE).get(key))
        if costs is None:
            costs = measure_forward_costs(model, argmax_only=argmax_only)
            write_store(STORE, key, costs.to_dict())
        _costs[key] = costs
    return _costs[key]


@torch.inference_mode()
def measure_forward_costs(model, repeats: int = 3, argmax_only: bool = False) -> ForwardCosts:
    """The fastest of `repeats` KV-cached forwards of n tokens after CONTEXT tokens (layers, then the
    output layer on the n rows), n in SIZES, made non-decreasing in n: a larger forward that timed
    faster shows that the smaller one was slowed down by something else on the machine."""
    from tjdkit.decoding.context import context_length
    from tjdkit.decoding.forward import greedy_tokens, hidden_states, new_cache, output_logits

    device = next(model.parameters()).device
    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(0)
    context = min(CONTEXT, (context_length(model) or 4096) - max(SIZES))
    # random tokens repeated: the layers cost the same on any tokens, and the copy makes the model as
    # sure of its next token as in real decoding, where the argmax screen rarely has a near-tie to
    # settle (on random tokens every row would be near-flat and cost a whole output row)
    cycle = torch.randint(vocab, (PATTERN,), generator=generator).repeat(context // PATTERN + max(SIZES) // PATTERN + 2)
    cache = new_cache(model)
    hidden_states(model, cycle[None, :context].to(device), cache)
    if hasattr(cache, "activate_past_recording"):
        cache.activate_past_recording()

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    times: dict[str, dict[int, list[float]]] = {"layers": {n: [] for n in SIZES}, "output": {n: [] for n in SIZES}}
    for round_ in range(repeats + 1):  # round 0 warms up
        for n in SIZES:
            feed = cycle[None, context : context + n].to(device)  # what the copy predicts next
            start = clock()
            hidden = hidden_states(model, feed, cache)
            middle = clock()
            greedy_tokens(model, hidden) if argmax_only else output_logits(model, hidden)
            end = clock()
            if round_:
                times["layers"][n].append(1000 * (middle - start))
                times["output"][n].append(1000 * (end - middle))
            cache.crop(-n)
    return ForwardCosts(**{part: _non_decreasing({n: min(ms) for n, ms in by_size.items()})
                           for part, by_size in times.items()})


def _non_decreasing(curve: dict[int, float]) -> dict[int, float]:
    """Each size's time capped by every larger size's (the running minimum from the largest down)."""
    fixed, lowest = {}, float("inf")
    for n in sorted(curve, reverse=True):
        lowest = min(lowest, curve[n])
        fixed[n] = lowest
    return dict(sorted(fixed.items()))


def interpolate(curve: dict[int, float], n: int) -> float:
    """Milliseconds for n: linear between measured sizes, extended by the last slope beyond them."""
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


def output_chunks(rows: int, first: int) -> list[tuple[int, int]]:
    """(start, size) of the chunks the output layer runs on, first `first` rows, then doubling."""
    chunks, start, size = [], 0, max(first, 1)
    while start < rows:
        chunks.append((start, min(size, rows - start)))
        start += size
        size *= 2
    return chunks


def expected_output_ms(costs: ForwardCosts, reach: list[float], rows: int, first: int) -> float:
    """Expected output-layer time for `rows` rows read lazily: row j is read when the first j drafts
    held (reach[j], reach[0] = 1), and a chunk runs when its first row is read."""
    return sum(reach[start] * costs.output_ms(size) for start, size in output_chunks(rows, first))


def best_first_chunk(costs: ForwardCosts, reach: list[float], rows: int) -> int:
    """The first chunk width with the least expected output time for this step (later chunks double)."""
    widths = [width for width in CHUNK_WIDTHS if width < rows] + [rows]
    return min(widths, key=lambda width: expected_output_ms(costs, reach, rows, width))


def step_ms(costs: ForwardCosts, reach: list[float], drafts: int) -> float:
    """Expected milliseconds of a step verifying `drafts` drafts: the layers on 1 + drafts tokens
    and the output chunks acceptance reaches, the first chunk sized at its best."""
    rows = 1 + drafts
    return costs.layers_ms(rows) + expected_output_ms(costs, reach, rows, best_first_chunk(costs, reach, rows))


def expected_tokens(reach: list[float], drafts: int) -> float:
    """1 + reach(1) + ... + reach(drafts): the model's own token, then each draft while all before it held."""
    return sum(reach[: drafts + 1])


def expected_rate(costs: ForwardCosts, reach: list[float], drafts: int) -> float:
    """Expected tokens per millisecond of a step that verifies `drafts` drafts."""
    return expected_tokens(reach, drafts) / step_ms(costs, reach, drafts)


def best_draft_length(costs: ForwardCosts, reach: list[float], limit: int) -> int:
    """The k in 1..limit with the most expected tokens per millisecond (the smallest on a tie); 0 when limit < 1."""
    if limit < 1:
        return 0
    return max(range(1, limit + 1), key=lambda k: expected_rate(costs, reach, k))


class AcceptanceProfile:
    """Per draft position j, the running chance that draft j is accepted once drafts 0..j-1 were:
    accepted over tried at that position, where each step tries its accepted drafts and, when it
    stopped early, the one rejected. A position with few tries leans on the one before it (a prior
    worth `weight` tries); position 0 starts from `prior`."""

    def __init__(self, prior: float = 0.5, weight: float = 4.0, depth: int = LARGEST):
        self.prior, self.weight = prior, weight
        self.accepted = [0] * depth
        self.tried = [0] * depth
        self._reach: list[float] | None = None

    def update(self, accepted: int, offered: int) -> None:
        for j in range(min(accepted, len(self.tried))):
            self.accepted[j] += 1
            self.tried[j] += 1
        if accepted < offered and accepted < len(self.tried):
            self.tried[accepted] += 1
        self._reach = None

    def rates(self) -> list[float]:
        """The conditional acceptance at each position."""
        rates, previous = [], self.prior
        for accepted, tried in zip(self.accepted, self.tried):
            previous = (accepted + self.weight * previous) / (tried + self.weight)
            rates.append(previous)
        return rates

    @property
    def rate(self) -> float:
        """The first draft's chance of being accepted."""
        return self.rates()[0]

    @property
    def reach(self) -> list[float]:
        """reach[j]: the chance that the first j drafts all hold (reach[0] = 1)."""
        if self._reach is None:
            reach = [1.0]
            for rate in self.rates():
                reach.append(reach[-1] * rate)
            self._reach = reach
        return self._reach


@functools.lru_cache(maxsize=64)
def constant_reach(accept: float, depth: int = LARGEST) -> tuple[float, ...]:
    """reach for a constant conditional acceptance a: 1, a, a^2, ..."""
    a = min(max(accept, 0.0), 1.0)
    return tuple(a**j for j in range(depth + 1))
