"""User specs for factorisation: which layers (`--layers`) and which Tucker ranks (`--rank`).

    parse_layers("last:4", num_layers=18)   # [14, 15, 16, 17]
    parse_rank("64,32,4")                   # (64, 32, 4); parse_rank("auto") -> "auto"
    check_rank((64, 32, 4), tensor.shape)   # TjdkitError when a rank exceeds its mode

Every mistake raises TjdkitError with one line that names the bad part, so the CLI can
print it and exit 2.
"""

from __future__ import annotations

from typing import Literal, Sequence, Union

from tjdkit.errors import TjdkitError

# The three decomposed modes of the attention tensor (d_model, head_dim, 4, heads), in order.
MODE_NAMES = ("d_model", "head_dim", "role")

Rank = tuple[int, int, int]
RankSpec = Union[Literal["auto"], Rank]

LAYERS_HELP = "use 'all', a comma-separated list like '0,5,11', or 'last:N'"
RANK_HELP = "use 'auto' or three positive integers 'R_dmodel,R_headdim,R_role' like '64,32,4'"


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """The layer indices a spec names, ascending: "all", "0,5,11" or "last:4"."""
    text = str(spec).strip().lower()
    if not text:
        raise TjdkitError(f"empty layer spec ({LAYERS_HELP})")
    if text == "all":
        return list(range(num_layers))
    if text.startswith("last:"):
        count = _positive_int(text[len("last:") :], f"bad layer spec '{spec}'", LAYERS_HELP)
        if count > num_layers:
            raise TjdkitError(f"layer spec '{spec}' asks for {count} layers but the model has {num_layers}")
        return list(range(num_layers - count, num_layers))
    layers: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if not _is_int(item):
            raise TjdkitError(f"bad layer spec '{spec}': '{item}' is not a layer index ({LAYERS_HELP})")
        index = int(item)
        if not 0 <= index < num_layers:
            raise TjdkitError(f"layer {index} is out of range: the model has layers 0..{num_layers - 1}")
        if index in layers:
            raise TjdkitError(f"layer {index} is listed twice in '{spec}'")
        layers.append(index)
    return sorted(layers)


def parse_rank(spec: str) -> RankSpec:
    """"auto", or the three multilinear ranks (R_dmodel, R_headdim, R_role) of "64,32,4"."""
    return parse_rank_list(spec, len(MODE_NAMES), "rank", RANK_HELP)  # type: ignore[return-value]


def parse_rank_list(spec: str, count: int, what: str, help_text: str) -> Union[Literal["auto"], tuple[int, ...]]:
    """"auto", or `count` positive integers separated by commas; `what` names the spec in errors."""
    text = str(spec).strip().lower()
    if text == "auto":
        return "auto"
    items = [item.strip() for item in text.split(",")]
    if len(items) != count:
        raise TjdkitError(f"bad {what} '{spec}': expected {count} ranks, got {len(items)} ({help_text})")
    return tuple(_positive_int(item, f"bad {what} '{spec}'", help_text) for item in items)


def check_rank(rank: Sequence[int], shape: Sequence[int]) -> Rank:
    """`rank` as a tuple, after checking each rank lies in 1..size of its mode of `shape`."""
    if len(rank) != len(MODE_NAMES):
        raise TjdkitError(f"expected {len(MODE_NAMES)} ranks ({', '.join(MODE_NAMES)}), got {len(rank)}")
    for name, r, size in zip(MODE_NAMES, rank, shape):
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise TjdkitError(f"rank for {name} must be a positive integer, got {r!r}")
        if r > size:
            raise TjdkitError(f"rank {r} for {name} exceeds its size {size}")
    return tuple(int(r) for r in rank)  # type: ignore[return-value]


def _is_int(text: str) -> bool:
    return text.lstrip("+-").isdigit() and text.isascii()


def _positive_int(text: str, context: str, help_text: str) -> int:
    text = text.strip()
    if not _is_int(text):
        raise TjdkitError(f"{context}: '{text}' is not an integer ({help_text})")
    value = int(text)
    if value < 1:
        raise TjdkitError(f"{context}: {value} must be at least 1 ({help_text})")
    return value
