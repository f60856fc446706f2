"""Joint multi-token heads: p(y_1..y_H | h) for the H tokens after a hidden state, and the
training windows (hidden state at t, the H tokens after it) they learn from (`heads.windows`).

    from tjdkit.heads import build_head
    head = build_head("cp", hidden_size=D, vocab_size=V, rank=R, horizon=H)
    head.log_prob(hidden, targets)          # [B, D], [B, H] -> [B], exact and normalised
    tokens, q = head.draft(hidden)          # [B, H] and the conditionals used, [B, H, V]

Heads: "stp" (next token only), "multihead" (H independent heads), "cp" (rank-R mixture
of products), "mps" (matrix product state with bond dimension R). Options, shared by
all: embedding_dim, positivity, draft_vocab, lm_head_weight, freeze_decoder, init_noise
(see `JointHead`). `build_head(**head.config())` rebuilds a head for its state_dict.

Sharing (`heads.hub`): `head.save_pretrained(DIR, base_model=...)`, `JointHead.from_pretrained(DIR or
"owner/name")` (the right subclass; safetensors + JSON, never pickle), `head.push_to_hub("owner/name")`.
"""

from __future__ import annotations

import inspect
from typing import Any

from tjdkit.errors import TjdkitError
from tjdkit.heads.base import JointHead
from tjdkit.heads.cp import CPHead
from tjdkit.heads.mps import MPSHead
from tjdkit.heads.multihead import MultiHead
from tjdkit.heads.positivity import POSITIVITY
from tjdkit.heads.stp import STPHead

HEADS: dict[str, type[JointHead]] = {cls.name: cls for cls in (STPHead, MultiHead, CPHead, MPSHead)}

_OPTIONS = {
    name
    for name, p in inspect.signature(JointHead.__init__).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
}


def build_head(
    name: str, *, hidden_size: int, vocab_size: int, rank: int = 1, horizon: int = 1, **options: Any
) -> JointHead:
    """Build the head called `name` (a key of HEADS); bad names and values raise TjdkitError."""
    cls = HEADS.get(name)
    if cls is None:
        raise TjdkitError(f"unknown head {name!r} (choose from {', '.join(HEADS)})")
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise TjdkitError(f"{name} head: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(_OPTIONS))})")
    return cls(hidden_size, vocab_size, rank, horizon, **options)


__all__ = ["HEADS", "POSITIVITY", "JointHead", "CPHead", "MPSHead", "MultiHead", "STPHead", "build_head"]
