"""Token entropy and the trigger threshold (static, or adaptive over a sliding window)."""

from __future__ import annotations

import math
from collections import deque
from typing import Sequence

import torch
from torch import Tensor

from tjdkit.tnot.config import TnotConfig


def entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """logits [..., V] -> entropy of softmax(logits / temperature) in nats [...], differentiable."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def adaptive_threshold(recent: Sequence[float], k: float = 2.0, min_std: float = 0.5, floor: float = 1.8) -> float:
    """max(mean + k * max(std, min_std), floor) over `recent` (population std)."""
    n = len(recent)
    mean = sum(recent) / n
    std = math.sqrt(sum((e - mean) ** 2 for e in recent) / n)
    return max(mean + k * max(std, min_std), floor)


class EntropyMonitor:
    """The threshold each new token is judged by, from the entropies seen before it.

    Static until `window` tokens have been seen when adaptive; one monitor per response,
    so nothing carries over from one prompt to the next.
    """

    def __init__(self, config: TnotConfig):
        self.config = config
        self.recent: deque[float] = deque(maxlen=config.window)
        self.seen = 0

    def threshold(self) -> float:
        c = self.config
        if c.adaptive and self.seen >= c.window:
            return adaptive_threshold(list(self.recent), c.k, c.min_std, c.floor)
        return c.entropy_threshold

    def observe(self, value: float) -> None:
        self.recent.append(value)
        self.seen += 1
