"""PredictionHead: a fresh classifier/regressor on a Hyformer's pooled bidirectional states, for downstream tasks."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from tjdkit.models.hyformer.layers import PredictionLayer, pool
from tjdkit.models.hyformer.losses import compute_prediction_loss


class PredictionHead(nn.Module):
    """Wraps a base Hyformer (its own prediction head, if any, is not used).

    `model(input_ids, task="prediction", attention_mask=..., labels=...) -> (logits [B, n], loss)`;
    num_labels 1 is regression, more are classes, `multilabel` makes them independent (NaN: unknown).
    """

    def __init__(
        self,
        base_model,
        num_labels: int,
        d_model: Optional[int] = None,
        dropout: float = 0.1,
        multilabel: bool = False,
        pooling: Optional[str] = None,
    ):
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.base_model = base_model
        self.num_labels, self.multilabel = num_labels, multilabel
        self.pooling = pooling or base_model.config.pooling
        self.layer = PredictionLayer(d_model or base_model.config.d_model, num_labels, dropout)
        std = base_model.config.initializer_range
        for linear in (self.layer.dense, self.layer.out):
            nn.init.normal_(linear.weight, std=std)
            nn.init.zeros_(linear.bias)

    def forward(
        self,
        input_ids: Tensor,
        task: str = "prediction",
        attention_mask: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,
    ) -> tuple[Tensor, Optional[Tensor]]:
        if task != "prediction":
            raise ValueError(f"PredictionHead runs the prediction task only, got {task!r}")
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        hidden = self.base_model.model(input_ids, attention_mask=mask, causal=False).last_hidden_state  # [B, T, D]
        logits = self.layer(pool(hidden, mask, self.pooling))  # [B, n]
        loss = None
        if labels is not None:
            loss = compute_prediction_loss(logits, labels, self.num_labels, multilabel=self.multilabel)
        return logits, loss
