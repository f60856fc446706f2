"""Training windows for joint heads: the hidden state at t and the H tokens after it.

A head trained on window (t, x_{t+1..t+H}) learns p(x_{t+1..t+H} | h_t). By default only
windows whose H targets are all real tokens count. Training passes `end_id` (EOS) so the
last H-1 positions of a sequence count too, their targets filled with EOS past the end:
otherwise the head never learns to end an answer. The memory-efficient variant keeps one
random offset and every H-th position (TJDNet), which cuts the work by H.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Windows:
    batch: torch.Tensor  # [N] which sequence
    position: torch.Tensor  # [N] t, the position whose hidden state predicts
    targets: torch.Tensor  # [N, H] x_{t+1..t+H}


def make_windows(
    input_ids: torch.Tensor,  # [B, T]
    attention_mask: torch.Tensor,  # [B, T], right padding
    horizon: int,
    first_position: Optional[torch.Tensor] = None,  # [B] earliest t to keep (e.g. the answer start - 1)
    every: int = 1,
    offset: int = 0,
    end_id: Optional[int] = None,  # fill targets past the sequence end with this (EOS)
) -> Windows:
    B, T = input_ids.shape
    lengths = attention_mask.sum(dim=1)  # [B]
    t = torch.arange(T, device=input_ids.device).expand(B, T)  # [B, T]
    reach = 1 if end_id is not None else horizon  # how many targets must be real tokens
    keep = t + reach < lengths[:, None]
    if first_position is not None:
        keep &= t >= first_position[:, None]
    if every > 1:
        keep &= (t % every) == (offset % every)
    batch, position = keep.nonzero(as_tuple=True)  # [N], [N]
    steps = torch.arange(1, horizon + 1, device=input_ids.device)  # [H]
    index = position[:, None] + steps  # [N, H]
    targets = input_ids[batch[:, None], index.clamp(max=T - 1)]  # [N, H]
    if end_id is not None:
        targets = targets.masked_fill(index >= lengths[batch][:, None], end_id)
    return Windows(batch, position, targets)


def last_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The backbone's final (normed) hidden states [B, T, D]: what `lm_head` sees."""
    return model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def base_window_nll(logits: torch.Tensor, windows: Windows) -> torch.Tensor:
    """-log p_base(x_{t+1..t+H}) under the base model's own chain rule, per window [N]."""
    horizon = windows.targets.shape[1]
    steps = torch.arange(horizon, device=logits.device)
    step_logits = logits[windows.batch[:, None], windows.position[:, None] + steps]  # [N, H, V]
    log_probs = torch.log_softmax(step_logits.float(), dim=-1)
    return -log_probs.gather(-1, windows.targets[..., None]).squeeze(-1).sum(dim=1)


def window_loss(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean -log p(window) / H over windows whose targets the head can represent."""
    keep = head.in_vocab(targets).all(dim=1)
    if not keep.any():
        return hidden.sum() * 0.0
    return -head.log_prob(hidden[keep], targets[keep]).mean() / targets.shape[1]
