"""How logits become tokens, in transformers' order: repetition penalty, temperature, top-k, top-p."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


@dataclass
class Sampling:
    """How the model's logits become the distribution tokens are chosen from, in
    transformers' order: repetition penalty, then temperature, top-k and top-p. Greedy
    (temperature 0) takes the argmax after the penalty."""

    temperature: float = 0.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    repetition_penalty: float = 1.0

    @classmethod
    def from_generation(cls, section) -> "Sampling":
        """A recipe's `generation` section; top-k 0 means no filter, and greedy ignores the filters."""
        return cls(section.temperature, section.top_k or None, section.top_p, section.repetition_penalty)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def argmax_only(self) -> bool:
        """Greedy without a penalty: a token is the argmax of the raw logits, and nothing else of them is read."""
        return self.greedy and self.repetition_penalty == 1.0

    def penalise(self, logits: Tensor, context: Tensor) -> Tensor:
        """logits [V], context [n] token ids seen so far -> logits with seen tokens made less likely."""
        if self.repetition_penalty == 1.0 or context.numel() == 0:
            return logits
        seen = logits.gather(0, context)
        seen = torch.where(seen < 0, seen * self.repetition_penalty, seen / self.repetition_penalty)
        return logits.scatter(0, context, seen)

    def probs(self, logits: Tensor) -> Tensor:
        """Penalised logits [..., V] -> the sampling distribution [..., V]: tempered, top-k and top-p filtered."""
        logits = logits / self.temperature
        if self.top_k:  # None or 0: no filter
            kth = torch.topk(logits, min(int(self.top_k), logits.shape[-1])).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p is not None and self.top_p < 1.0:
            ordered, order = torch.sort(logits, descending=True)
            mass_before = torch.softmax(ordered, dim=-1).cumsum(-1) - torch.softmax(ordered, dim=-1)
            drop = mass_before > self.top_p  # keep the smallest prefix holding top_p of the mass
            logits = logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
        return torch.softmax(logits, dim=-1)

    def pick(self, logits: Tensor, generator) -> int:
        """Penalised logits [V] -> one token: the argmax, or a sample."""
        if self.greedy:
            return int(logits.argmax())
        return int(torch.multinomial(self.probs(logits), 1, generator=generator))



def penalty_context(ids: Tensor, tokens: list[int]) -> Tensor:
    """The prompt [1, T] and the tokens after it as one id vector [T + n] (for the repetition penalty)."""
    return torch.cat([ids[0], torch.tensor(tokens, dtype=ids.dtype, device=ids.device)])

