"""H independent next-token heads: p(y_1..y_H | h) = prod_h p_h(y_h | h).

The multi-token-prediction / Medusa baseline: one component per position, no coupling
between positions, so drafting is H independent choices. `rank` is ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tjdkit.heads.base import JointHead


class MultiHead(JointHead):
    name = "multihead"

    def num_components(self) -> int:
        return self.horizon

    def _log_prob_local(self, hidden: Tensor, local: Tensor) -> Tensor:
        log_f, log_z = self._factors(hidden)  # [B, H, K], [B, H] | None
        lp = log_f.gather(-1, local.unsqueeze(-1)).squeeze(-1)  # [B, H]
        if log_z is not None:
            lp = lp - log_z
        return lp.sum(dim=-1)  # [B]

    def _draft_local(self, hidden: Tensor, pick) -> tuple[Tensor, Tensor]:
        log_f, _ = self._factors(hidden)  # [B, H, K]; pick normalises each row
        tokens, qs = zip(*(pick(log_f[:, h]) for h in range(self.horizon)))
        return torch.stack(tokens, dim=1), torch.stack(qs, dim=1)  # [B, H], [B, H, K]
