"""Hyformer's building blocks: RMSNorm, RoPE, attention with a switchable causal mask, SwiGLU.

Shapes: B batch, T new tokens, S keys (cached + new), H heads, d head size, D model size.
They are defined in modeling_hyformer.py (the file saved directories carry); tjdkit adds only
the seed's KVCache signature with its size checks.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from tjdkit.models.hyformer import modeling_hyformer
from tjdkit.models.hyformer.modeling_hyformer import (
    Attention,
    CacheUpdate,
    HyformerBlock,
    PredictionLayer,
    RMSNorm,
    Rotary,
    SwiGLU,
    attention_allowed,
    pool,
    rotate,
)

__all__ = [
    "Attention",
    "CacheUpdate",
    "HyformerBlock",
    "KVCache",
    "PredictionLayer",
    "RMSNorm",
    "Rotary",
    "SwiGLU",
    "attention_allowed",
    "pool",
    "rotate",
]


class KVCache(modeling_hyformer.KVCache):
    """One layer's keys and values so far, [B, H, S, d]: the cache `forward(kv_caches=...)` passes around.

    `KVCache()` starts empty. The seed's signature `KVCache(d_model, n_heads, max_seq_len)` works too;
    the sizes given are then checked on every update, so a cache cannot be reused with the wrong model."""

    def __init__(self, d_model: Optional[int] = None, n_heads: Optional[int] = None, max_seq_len: Optional[int] = None,
                 *, key: Optional[Tensor] = None, value: Optional[Tensor] = None):
        super().__init__(key, value)
        self.d_model, self.n_heads, self.max_seq_len = d_model, n_heads, max_seq_len

    def update(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        _, heads, new, size = key.shape
        if (self.n_heads is not None and heads != self.n_heads) or (self.d_model is not None and heads * size != self.d_model):
            raise ValueError(f"keys of {heads} heads x {size} do not fit this KVCache (d_model {self.d_model}, n_heads {self.n_heads})")
        if self.max_seq_len is not None and self.length + new > self.max_seq_len:
            raise ValueError(f"{self.length + new} tokens exceed this KVCache's max_seq_len ({self.max_seq_len})")
        return super().update(key, value)
