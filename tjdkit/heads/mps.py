"""MPS (matrix product state) head: a non-negative tensor train over the H positions.

    p(y_1..y_H | h) = alpha^T G_1(y_1) G_2(y_2) ... G_H(y_H) beta / Z(h)

with bond dimension R, beta = ones and, for the cores,

    G_1(y)[i, j] = delta_ij f_{1,j}(y)              (alpha already mixes the states)
    G_h(y)[i, j] = A_h[i, j] f_{h,j}(y),   h >= 2

alpha = softmax(Linear(h)) [R] and A_h = row-softmax(Linear(h)) [R, R] (row-stochastic),
f_{h,j} from component (h, j)'s projection and the shared decoder. This is an HMM-shaped
MPS: the state at position h picks the token distribution, and A_h carries the state
forward, so positions are coupled through the bond. With positivity "none" the f_{h,j}
are softmaxes, sum_y G_h(y) = A_h is row-stochastic and Z = 1 by construction; otherwise
Z is the same contraction with every f replaced by its sum over the vocabulary.

Emissions depend on the destination state only (R*H*K logits instead of R*R*H*K), which
keeps the cost of a CP head of the same rank. log_prob is a log-space forward pass;
draft carries a left environment (forward messages over drafted tokens) and uses right
environments (backward messages over marginalised positions) for the conditionals.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from tjdkit.heads.base import JointHead


class MPSHead(JointHead):
    name = "mps"

    def __init__(self, hidden_size: int, vocab_size: int, rank: int = 1, horizon: int = 1, **options):
        super().__init__(hidden_size, vocab_size, rank, horizon, **options)
        self.alpha = nn.Linear(hidden_size, rank)  # left boundary logits
        # A_2..A_H logits (none for horizon 1, where the head is a CP mixture).
        self.trans = nn.Linear(hidden_size, (horizon - 1) * rank * rank) if horizon > 1 else None
        for layer in (self.alpha, self.trans):  # zero init = uniform boundary and transitions
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def _extra_parameters(self) -> int:
        R, H = self.rank, self.horizon
        return (self.hidden_size + 1) * (R + (H - 1) * R * R)  # self.alpha, self.trans

    def num_components(self) -> int:
        return self.horizon * self.rank  # component c = h * R + j

    def _params(self, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        B, R, H = hidden.shape[0], self.rank, self.horizon
        log_alpha = self._linear_log_softmax(self.alpha, hidden, (R,))  # [B, R]
        if self.trans is None:
            log_a = log_alpha.new_zeros(B, 0, R, R)
        else:
            log_a = self._linear_log_softmax(self.trans, hidden, (H - 1, R, R))  # [B, H-1, R, R]; A_{h+2} = log_a[:, h]
        log_f, log_z = self._factors(hidden)  # [B, H*R, K], [B, H*R] | None
        log_f = log_f.view(B, H, R, -1)  # [B, H, R, K]
        if log_z is not None:
            log_z = log_z.view(B, H, R)  # [B, H, R]
        return log_alpha, log_a, log_f, log_z

    @staticmethod
    def _forward(log_alpha: Tensor, log_a: Tensor, log_e: Tensor) -> Tensor:
        """log alpha^T D_1 A_2 D_2 ... A_H D_H 1 with D_h = diag(e_h); log_e [B, H, R] -> [B]."""
        msg = log_alpha + log_e[:, 0]  # [B, R]
        for h in range(1, log_e.shape[1]):
            msg = torch.logsumexp(msg.unsqueeze(-1) + log_a[:, h - 1], dim=1) + log_e[:, h]  # [B, R]
        return torch.logsumexp(msg, dim=-1)

    def _log_prob_local(self, hidden: Tensor, local: Tensor) -> Tensor:
        log_alpha, log_a, log_f, log_z = self._params(hidden)
        B, H, R, _ = log_f.shape
        idx = local.view(B, H, 1, 1).expand(B, H, R, 1)
        log_e = log_f.gather(-1, idx).squeeze(-1)  # [B, H, R]: log f_{h,j}(y_h)
        lp = self._forward(log_alpha, log_a, log_e)
        if log_z is not None:
            lp = lp - self._forward(log_alpha, log_a, log_z)  # - log Z
        return lp

    def _draft_local(self, hidden: Tensor, pick) -> tuple[Tensor, Tensor]:
        log_alpha, log_a, log_f, log_z = self._params(hidden)
        B, H, R, _ = log_f.shape
        # Right environments: right[:, h, j] = log sum over y_{h+1..H} given state j at h.
        right = log_f.new_zeros(B, H, R)  # all zeros (= log 1) when the factors are normalised
        if log_z is not None:
            for h in range(H - 2, -1, -1):
                right[:, h] = torch.logsumexp(log_a[:, h] + (log_z[:, h + 1] + right[:, h + 1]).unsqueeze(1), dim=-1)
        left = log_alpha  # [B, R]: log P(state at h, y_<h drafted), up to a constant
        rows = torch.arange(B, device=hidden.device)
        tokens, qs = [], []
        for h in range(H):
            if h > 0:
                left = torch.logsumexp(left.unsqueeze(-1) + log_a[:, h - 1], dim=1)  # [B, R]
            # p(y_h | y_<h) ∝ sum_j left_j f_{h,j}(y_h) right_j
            log_u = torch.logsumexp((left + right[:, h]).unsqueeze(-1) + log_f[:, h], dim=1)  # [B, K]
            tok, q = pick(log_u)
            tokens.append(tok)
            qs.append(q)
            left = left + log_f[rows, h, :, tok]  # [B, R]
            left = left - torch.logsumexp(left, dim=-1, keepdim=True)
        return torch.stack(tokens, dim=1), torch.stack(qs, dim=1)
