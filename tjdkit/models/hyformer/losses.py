"""Hyformer's three losses. Positions labelled -100 and NaN targets do not count; a batch with
nothing to count gives a zero loss that still backpropagates (never NaN)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def _zero(logits: Tensor) -> Tensor:
    return logits.sum() * 0.0


def compute_lm_loss(logits: Tensor, labels: Tensor, shift_labels: bool = True) -> Tensor:
    """Next-token cross-entropy. logits [B, T, V]; labels [B, T] are the inputs themselves when
    `shift_labels` (position t predicts labels[t + 1]), else already aligned with the logits."""
    if shift_labels:
        logits, labels = logits[:, :-1], labels[:, 1:]
    if not (labels != IGNORE_INDEX).any():
        return _zero(logits)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def compute_mlm_loss(logits: Tensor, labels: Tensor, vocab_size: Optional[int] = None, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy at the masked positions only (labels -100 elsewhere). logits [B, T, V]."""
    vocab_size = vocab_size or logits.shape[-1]
    if not (labels != IGNORE_INDEX).any():
        return _zero(logits)
    return F.cross_entropy(
        logits.reshape(-1, vocab_size).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )


def compute_prediction_loss(
    logits: Tensor,  # [B, n]
    labels: Tensor,
    num_labels: int,
    multilabel: bool = False,
    task_type: Optional[str] = None,
) -> Tensor:
    """Classification (labels [B] class ids, -100 ignored), multi-label (labels [B, n] in {0, 1},
    binary cross-entropy) or regression (labels [B, n] floats, mean squared error).

    `task_type` (classification, regression, multilabel) decides; without it: multilabel if
    asked, regression for one output or float labels, else classification. Multi-label and
    regression targets may be NaN where a value is unknown: those entries do not count.
    """
    if task_type is None:
        task_type = "multilabel" if multilabel else "regression" if num_labels == 1 or labels.is_floating_point() else "classification"
    if task_type == "classification":
        labels = labels.reshape(-1).long()
        if not (labels != IGNORE_INDEX).any():
            return _zero(logits)
        return F.cross_entropy(logits.reshape(-1, num_labels).float(), labels, ignore_index=IGNORE_INDEX)
    if task_type not in ("regression", "multilabel"):
        raise ValueError(f"unknown prediction task type {task_type!r} (classification, regression or multilabel)")
    logits = logits.reshape(labels.shape[0], -1).float()
    targets = labels.reshape(logits.shape).float()
    known = ~torch.isnan(targets)
    if not known.any():
        return _zero(logits)
    if task_type == "multilabel":
        return F.binary_cross_entropy_with_logits(logits[known], targets[known])
    return F.mse_loss(logits[known], targets[known])
