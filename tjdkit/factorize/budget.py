"""Tucker ranks that hit a parameter budget: `--rank 2x` and `--rank 4x`.

The stored factorised layer (`FactorizedAttentionProjections`) keeps U_dmodel [d_model, R1],
U_headdim [head_dim, R2] and one R1 x R2 core per head and role (the role factor is folded
into the cores), so its size does not depend on R3:

    d_model * R1 + head_dim * R2 + (2 * heads + 2 * kv_heads) * R1 * R2

`compression_ranks` shrinks R1 and R2 together, in proportion to their modes, to the
largest pair whose size is at most dense / factor; R3 stays full (it is free).
"""

from __future__ import annotations

import re
from typing import Optional

from tjdkit.errors import TjdkitError
from tjdkit.factorize.specs import Rank
from tjdkit.factorize.tucker import ROLES, AttentionShape, dense_num_parameters

_COMPRESSION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*x\s*$", re.IGNORECASE)


def parse_compression(spec: str) -> Optional[float]:
    """2.0 for "2x", None for anything that is not a compression target."""
    match = _COMPRESSION.match(str(spec))
    if match is None:
        return None
    factor = float(match.group(1))
    if factor <= 1.0:
        raise TjdkitError(f"bad rank '{spec}': a compression target must be above 1x (like 2x or 4x)")
    return factor


def factorized_num_parameters(shape: AttentionShape, r_dmodel: int, r_headdim: int) -> int:
    """Weights of one stored Tucker layer (biases, kept as they were, not counted)."""
    s = shape
    cores = (2 * s.heads + 2 * s.kv_heads) * r_dmodel * r_headdim
    return s.d_model * r_dmodel + s.head_dim * r_headdim + cores


def compression_ranks(shape: AttentionShape, factor: float) -> Rank:
    """The largest proportional (R1, R2, roles) whose stored size is <= dense / factor."""
    budget = dense_num_parameters(shape) / factor
    best: Optional[Rank] = None
    for r1 in range(1, shape.d_model + 1):
        r2 = max(1, min(shape.head_dim, round(r1 * shape.head_dim / shape.d_model)))
        if factorized_num_parameters(shape, r1, r2) > budget:
            break
        best = (r1, r2, len(ROLES))
    if best is None:
        raise TjdkitError(f"{factor:g}x is out of reach: even ranks (1, 1) exceed dense / {factor:g}")
    return best
