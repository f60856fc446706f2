"""How a head turns decoder logits into non-negative factors, always in log space.

`"none"` (the default) gives normalised factors (log_softmax), so every factor sums to 1
over the vocabulary and a head's joint distribution is normalised by construction. The
other choices give unnormalised factors f(logits) >= 0, as in the TJDNet ablations; the
heads then divide by the exact normaliser, obtained by marginalising each factor
(logsumexp over the vocabulary) and contracting the rest of the model.

Functions that can reach exactly 0 (relu, sq, abs) get `EPS` added, so a factor is never
all zeros (normaliser -inf) and a token never gets log f = -inf.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-6

# name -> logits [..., K] -> log f [..., K]
_LOG_FACTOR: dict[str, Callable[[Tensor], Tensor]] = {
    "none": lambda x: F.log_softmax(x, dim=-1),
    "exp": lambda x: x,
    "safe_exp": lambda x: x - x.amax(dim=-1, keepdim=True),  # exp(x - max x): rescaled, at most 1
    "sigmoid": F.logsigmoid,
    "relu": lambda x: torch.log(F.relu(x) + EPS),
    "sq": lambda x: torch.log(x.square() + EPS),
    "abs": lambda x: torch.log(x.abs() + EPS),
}

POSITIVITY = tuple(_LOG_FACTOR)


def log_factors(logits: Tensor, positivity: str) -> tuple[Tensor, Optional[Tensor]]:
    """logits [..., K] -> (log f [..., K], log Z [...] or None when the factors are normalised).

    log Z = log sum_y f(y), the normaliser of each factor on its own.
    """
    log_f = _LOG_FACTOR[positivity](logits)
    if positivity == "none":
        return log_f, None
    return log_f, torch.logsumexp(log_f, dim=-1)
