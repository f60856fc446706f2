"""BERT-style corruption for Hyformer's `mlm` task: which tokens are masked, and what replaces them."""

from __future__ import annotations

import torch


def mask_tokens(
    ids: torch.Tensor,  # [B, T], the task token first
    mask: torch.Tensor,  # [B, T]
    fraction: float,
    mask_id: int,
    random_ids: torch.Tensor,  # [R] ids a masked token may be replaced with
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption -> (inputs, labels): `fraction` of the real tokens after the task token
    are chosen (at least one per row); of those 80% become <mask>, 10% a random token, 10%
    stay. Labels hold the original ids there and -100 elsewhere."""
    candidates = mask.bool().clone()
    candidates[:, 0] = False
    scores = torch.rand(ids.shape, generator=generator)
    chosen = candidates & (scores < fraction)
    forced = scores.masked_fill(~candidates, 2.0).argmin(dim=1)  # each row's lowest-scored candidate
    chosen[torch.arange(ids.shape[0]), forced] |= candidates[torch.arange(ids.shape[0]), forced]
    how = torch.rand(ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[chosen & (how < 0.8)] = mask_id
    swap = chosen & (how >= 0.8) & (how < 0.9)
    picks = torch.randint(len(random_ids), (int(swap.sum()),), generator=generator)
    inputs[swap] = random_ids[picks]
    return inputs, ids.masked_fill(~chosen, -100)


def regular_ids(tokenizer) -> torch.Tensor:
    """Ids a masked token may be swapped for: everything but the special tokens."""
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i in range(len(tokenizer)) if i not in special], dtype=torch.long)
