"""Hyformer's building blocks: RMSNorm, RoPE, attention with a switchable causal mask, SwiGLU.

Shapes: B batch, T new tokens, S keys (cached + new), H heads, d head size, D model size.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tjdkit.models.hyformer.config import HyformerConfig

# Appends one layer's new keys/values to its cache and returns all of them: (k, v) -> (k_all, v_all).
CacheUpdate = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class KVCache:
    """One layer's keys and values so far, [B, H, S, d]: the cache `forward(kv_caches=...)` passes around.

    `KVCache()` starts empty. The seed's signature `KVCache(d_model, n_heads, max_seq_len)` works too;
    the sizes given are then checked on every update, so a cache cannot be reused with the wrong model."""

    def __init__(self, d_model: Optional[int] = None, n_heads: Optional[int] = None, max_seq_len: Optional[int] = None,
                 *, key: Optional[Tensor] = None, value: Optional[Tensor] = None):
        self.d_model, self.n_heads, self.max_seq_len = d_model, n_heads, max_seq_len
        self.key, self.value = key, value

    def update(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        _, heads, new, size = key.shape
        if (self.n_heads is not None and heads != self.n_heads) or (self.d_model is not None and heads * size != self.d_model):
            raise ValueError(f"keys of {heads} heads x {size} do not fit this KVCache (d_model {self.d_model}, n_heads {self.n_heads})")
        if self.max_seq_len is not None and self.length + new > self.max_seq_len:
            raise ValueError(f"{self.length + new} tokens exceed this KVCache's max_seq_len ({self.max_seq_len})")
        if self.key is not None:
            key, value = torch.cat([self.key, key], dim=2), torch.cat([self.value, value], dim=2)
        self.key, self.value = key, value
        return key, value

    @property
    def length(self) -> int:
        return 0 if self.key is None else self.key.shape[2]


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


class Rotary(nn.Module):
    """cos/sin of RoPE at given positions; relative by construction, so left padding does not change scores."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions [B, T] -> cos, sin [B, 1, T, d]. Frequencies are computed here, not kept in a
        buffer: nothing to save, and nothing for transformers' meta-device loading to lose."""
        steps = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=positions.device) / self.head_dim
        angles = positions.float()[..., None] * (1.0 / self.theta**steps)  # [B, T, d/2]
        angles = torch.cat([angles, angles], dim=-1)[:, None]  # [B, 1, T, d]
        return angles.cos(), angles.sin()


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: HyformerConfig):
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.q_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.k_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.v_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.o_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.attn_dropout = config.attn_dropout

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], allowed: Tensor, cache: Optional[CacheUpdate]) -> Tensor:
        """x [B, T, D], allowed [B, 1, T, S] (True: may attend) -> [B, T, D]."""
        B, T, _ = x.shape
        q, k, v = (proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))
        q, k = rotate(q, *rope), rotate(k, *rope)  # [B, H, T, d]
        if cache is not None:
            k, v = cache(k, v)  # [B, H, S, d]
        dropout = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)  # [B, H, T, d]
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, config: HyformerConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class HyformerBlock(nn.Module):
    """Pre-norm: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: HyformerConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.eps)
        self.mlp = SwiGLU(config)
        self.dropout = nn.Dropout(config.resid_dropout)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], allowed: Tensor, cache: Optional[CacheUpdate] = None) -> Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), rope, allowed, cache))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


def attention_allowed(
    key_mask: Tensor,  # [B, S] 1 for real keys (cached + new), 0 for padding
    query_length: int,
    causal: bool,
) -> Tensor:
    """[B, 1, T, S] True where a query may attend: real keys, and under `causal` only keys up to its own position.

    A query always sees itself, so a padding row never has an empty softmax (no NaN).
    """
    S = key_mask.shape[1]
    past = S - query_length
    query_at = past + torch.arange(query_length, device=key_mask.device)  # [T] each query's key index
    key_at = torch.arange(S, device=key_mask.device)  # [S]
    allowed = key_mask.bool()[:, None, :].expand(-1, query_length, -1)  # [B, T, S]
    if causal:
        allowed = allowed & (key_at[None, :] <= query_at[:, None])
    allowed = allowed | (key_at[None, :] == query_at[:, None])
    return allowed[:, None]


class PredictionLayer(nn.Module):
    """Pooled hidden state [B, D] -> [B, n]: dense, GELU, dropout, output (BERT's pooler-classifier shape)."""

    def __init__(self, d_model: int, num_labels: int, dropout: float = 0.0):
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, num_labels)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.out(self.dropout(F.gelu(self.dense(pooled))))


def pool(hidden: Tensor, mask: Tensor, how: str) -> Tensor:
    """hidden [B, T, D], mask [B, T] -> [B, D]: the first token's state, or the mean over real tokens."""
    if how == "first":
        first = mask.long().argmax(dim=1)  # the first real token (left padding too)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
    weights = mask.to(hidden.dtype)[..., None]  # [B, T, 1]
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
