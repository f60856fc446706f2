"""CP (canonical polyadic) head: a rank-R mixture of products of per-position factors.

    p(y_1..y_H | h) = sum_r w_r(h) prod_h f_{r,h}(y_h | h) / Z(h)
    Z(h)            = sum_r w_r(h) prod_h sum_y f_{r,h}(y | h)

w = softmax(Linear(h)) [R]; f_{r,h} comes from component (r, h)'s projection and the
shared decoder. With positivity "none" each f_{r,h} is a softmax, so Z = 1 and the head is
a mixture of R multihead-style predictors: the mixture is what couples positions.

Unnormalised factors (other positivities) are folded into that form exactly: with
Z_{r,h} = sum_y f_{r,h}(y) and p_{r,h} = f_{r,h} / Z_{r,h},

    p(y) = sum_r w'_r prod_h p_{r,h}(y_h),   w'_r = w_r prod_h Z_{r,h} / Z

so log_prob and draft share one normalised code path. Everything runs in log space
(logsumexp over r), so nothing overflows for large H or R.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from tjdkit.heads.base import JointHead


class CPHead(JointHead):
    name = "cp"

    def __init__(self, hidden_size: int, vocab_size: int, rank: int = 1, horizon: int = 1, **options):
        super().__init__(hidden_size, vocab_size, rank, horizon, **options)
        self.mix = nn.Linear(hidden_size, rank)  # mixture logits; zero init = uniform weights
        nn.init.zeros_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)

    def _extra_parameters(self) -> int:
        return (self.hidden_size + 1) * self.rank  # self.mix

    def num_components(self) -> int:
        return self.rank * self.horizon  # component c = r * H + h

    def _params(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """-> log w' [B, R] (normalised mixture weights), log p [B, R, H, K] (normalised factors)."""
        B, R, H = hidden.shape[0], self.rank, self.horizon
        log_w = self._linear_log_softmax(self.mix, hidden, (R,))  # [B, R]
        log_f, log_z = self._factors(hidden)  # [B, R*H, K], [B, R*H] | None
        log_f = log_f.view(B, R, H, -1)  # [B, R, H, K]
        if log_z is not None:
            log_z = log_z.view(B, R, H)
            log_f = log_f - log_z.unsqueeze(-1)  # p_{r,h} = f_{r,h} / Z_{r,h}
            log_w = torch.log_softmax(log_w + log_z.sum(dim=-1), dim=-1)  # w'_r ∝ w_r prod_h Z_{r,h}
        return log_w, log_f

    def _log_prob_local(self, hidden: Tensor, local: Tensor) -> Tensor:
        log_w, log_p = self._params(hidden)
        B, R, H, _ = log_p.shape
        idx = local.view(B, 1, H, 1).expand(B, R, H, 1)
        lp_r = log_p.gather(-1, idx).squeeze(-1).sum(dim=-1)  # [B, R]: log prod_h p_{r,h}(y_h)
        return torch.logsumexp(log_w + lp_r, dim=-1)  # [B]

    def _draft_local(self, hidden: Tensor, pick) -> tuple[Tensor, Tensor]:
        log_w, log_p = self._params(hidden)
        B, R, H, _ = log_p.shape
        post = log_w  # [B, R]: posterior over components, log w'_r prod_{h' < h} p_{r,h'}(y_h') normalised
        rows = torch.arange(B, device=hidden.device)
        tokens, qs = [], []
        for h in range(H):
            # p(y_h | y_<h) = sum_r post_r p_{r,h}(y_h): later positions sum to 1 and drop out
            log_u = torch.logsumexp(post.unsqueeze(-1) + log_p[:, :, h], dim=1)  # [B, K]
            tok, q = pick(log_u)
            tokens.append(tok)
            qs.append(q)
            post = post + log_p[rows, :, h, tok]  # [B, R]
            post = post - torch.logsumexp(post, dim=-1, keepdim=True)
        return torch.stack(tokens, dim=1), torch.stack(qs, dim=1)
