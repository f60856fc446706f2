"""How sure a difference in accuracy is, when two methods answered the same items.

Both methods see every item, so their scores are paired: resampling items (not answers)
keeps each item's pair together, and the spread of the resampled mean difference gives the
interval. The percentile bootstrap needs no assumption about the shape of that spread,
which matters at the small differences and few hundred items a CPU evaluation has.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class PairedDifference:
    difference: float  # mean(treated) - mean(baseline) over the items
    low: float  # the interval's ends, at `level`
    high: float
    level: float
    items: int
    resamples: int

    def to_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap(baseline: Sequence[float], treated: Sequence[float], resamples: int = 10_000,
                     level: float = 0.95, seed: int = 0) -> PairedDifference:
    """The mean difference treated - baseline and its percentile-bootstrap interval over items.

    Scores are per item (1/0 for right/wrong, or any number), in the same item order."""
    if len(baseline) != len(treated):
        raise ValueError(f"paired scores need the same items: {len(baseline)} vs {len(treated)}")
    if not baseline:
        raise ValueError("no items to compare")
    differences = torch.tensor([float(t) - float(b) for b, t in zip(baseline, treated)], dtype=torch.float64)
    n = len(differences)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(n, (resamples, n), generator=generator)  # each row: one resample of the items
    means = sorted(differences[picks].mean(dim=1).tolist())
    tail = (1 - level) / 2
    return PairedDifference(
        difference=float(differences.mean()),
        low=_quantile(means, tail),
        high=_quantile(means, 1 - tail),
        level=level,
        items=n,
        resamples=resamples,
    )


def _quantile(ordered: list[float], q: float) -> float:
    """Linear interpolation between the order statistics (numpy's default rule)."""
    position = q * (len(ordered) - 1)
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)
