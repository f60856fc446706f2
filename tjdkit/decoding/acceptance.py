"""Verify's acceptance along a given continuation, without generating: one forward, every step."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from tjdkit.decoding.context import check_prompt
from tjdkit.decoding.stats import DecodeStats


@torch.no_grad()
def acceptance(model, head, input_ids: Tensor, continuation) -> DecodeStats:
    """Teacher-forced greedy verify steps along `continuation` (token ids after the [1, T] prompt).

    One forward over prompt + continuation gives every hidden state. A step whose last
    chosen token is continuation[i] drafts from the hidden state that predicted it,
    conditioned on it (as `verify` does), accepts the longest draft prefix equal to
    continuation[i+1:], and the token after the accepted drafts is the model's. So the
    steps are exactly greedy `verify`'s when `continuation` is the model's greedy output:
    `accepted`, `offered` and `tau` match, and `forwards` is 1 + steps although only one
    forward runs here.
    """
    from tjdkit.heads.windows import last_hidden

    check_prompt(input_ids)
    start = time.perf_counter()
    device = next(model.parameters()).device
    target = torch.as_tensor(list(continuation), dtype=torch.long).reshape(-1)  # [N]
    n, t, h = target.numel(), input_ids.shape[1], head.horizon
    stats = DecodeStats(mode="acceptance", new_tokens=n)
    if n == 0:
        stats.seconds = time.perf_counter() - start
        return stats

    full = torch.cat([input_ids.to(device), target[None].to(device, input_ids.dtype)], dim=1)  # [1, T+N]
    hidden = last_hidden(model, full, torch.ones_like(full))[0]  # [T+N, D]; row p predicts token p+1
    i = 0  # index of the last chosen token
    while i < n - 1:
        first = target[i : i + 1].to(device)
        room = n - 1 - i  # tokens still to come; the model supplies at least the last one
        offered = min(h - 1, room - 1) if bool(head.in_vocab(first).all()) else 0
        accepted = 0
        if offered > 0:
            drafted, _ = head.draft(hidden[t - 1 + i][None], greedy=True, first=first)  # [1, H]
            match = drafted[0, 1 : 1 + offered].cpu() == target[i + 1 : i + 1 + offered]
            accepted = int(match.long().cumprod(0).sum())  # length of the matching prefix
        stats.accepted.append(accepted)
        stats.offered.append(offered)
        i += accepted + 1
    stats.forwards = 1 + len(stats.accepted)
    stats.seconds = time.perf_counter() - start
    return stats

