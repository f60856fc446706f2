"""Fitting a delta on the final hidden state: SLOT's prompt stage and SRGen's reflection.

logits(h + delta) = W h + b + W delta, so the base logits W h + b of the positions in the
loss are computed once (one GEMM, no gradient) and every AdamW step only adds the shift
W delta to them: a matrix-vector product forward and one backward, plus softmaxes over
the rows. Nothing flows through the backbone or into the model's weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from tjdkit.decoding.forward import apply_soft_cap
from tjdkit.tnot.config import TnotConfig
from tjdkit.tnot.trigger import entropy


@dataclass
class DeltaFit:
    delta: Tensor  # [D] float32
    shift: Tensor  # [V] float32: W @ delta, what the delta adds to every row of logits
    losses: list[float] = field(default_factory=list)  # the loss before each step, then after the last
    cross_entropy: list[float] = field(default_factory=list)  # its CE part at the same points


def _usable(tensor: Tensor) -> Tensor:
    """A tensor autograd may save: made under inference_mode, it is copied out (else used as is)."""
    tensor = tensor.detach()
    return tensor.clone() if tensor.is_inference() else tensor


def fit_delta(
    weight: Tensor,  # [V, D] the output layer's weight
    base: Tensor,  # [n, V] raw (uncapped) logits of the positions whose next tokens are `targets`
    targets: Tensor,  # [n] long
    config: TnotConfig,
    *,
    focus: Optional[Tensor] = None,  # [V] raw logits of the position whose entropy is minimised (reflection)
    temperature: float = 1.0,
    cap: Optional[float] = None,
) -> DeltaFit:
    """`config.steps` AdamW steps from delta = 0 on CE(targets), or with `focus`,
    (1 - w) * CE + w * entropy(focus) with w = config.entropy_weight.

    Runs with gradients even when called under no_grad or inference_mode.
    """
    w = config.entropy_weight if focus is not None else 0.0
    if focus is None and targets.numel() == 0:  # a one-token prompt: nothing to fit
        zero = torch.zeros(weight.shape[1], device=weight.device)
        return DeltaFit(zero, torch.zeros(weight.shape[0], device=weight.device))
    with torch.inference_mode(False), torch.enable_grad():
        weight, base, targets = _usable(weight), _usable(base.float()), _usable(targets)
        focus = _usable(focus.float()) if focus is not None else None
        delta = torch.zeros(weight.shape[1], device=weight.device, dtype=torch.float32, requires_grad=True)
        optimizer = torch.optim.AdamW([delta], lr=config.lr, weight_decay=config.weight_decay, eps=config.eps)

        def loss_terms(shift: Tensor) -> tuple[Tensor, Tensor]:
            ce = torch.nn.functional.cross_entropy(apply_soft_cap(base + shift, cap), targets) if targets.numel() else shift.new_zeros(())
            if focus is None:
                return ce, ce
            return (1 - w) * ce + w * entropy(apply_soft_cap(focus + shift, cap), temperature), ce

        fit = DeltaFit(delta, delta)
        for _ in range(config.steps):
            loss, ce = loss_terms((weight @ delta.to(weight.dtype)).float())  # shift [V]
            fit.losses.append(float(loss.detach()))
            fit.cross_entropy.append(float(ce.detach()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            fit.delta = delta.detach().clone()
            fit.shift = (weight @ fit.delta.to(weight.dtype)).float()
            loss, ce = loss_terms(fit.shift)
            fit.losses.append(float(loss))
            fit.cross_entropy.append(float(ce))
    return fit
