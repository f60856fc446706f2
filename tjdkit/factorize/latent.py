"""A KV cache that shrinks on multi-query models: partial-RoPE keys and a low-rank latent value.

Gemma 3 270M has one KV head: its cache (2 x 256 numbers per token and layer) is already small,
and TPA's factors make it larger. What can still shrink is each key's and value's own width:

- Keys keep only the RoPE frequency pairs that carry the attention scores (MHA2MLA's partial
  RoPE, chosen by the product of the pair's query and key norms on calibration text). RoPE
  rotates each pair (i, i + head_dim/2) on its own, so dropping pairs commutes with it: the kept
  pairs' scores are exact, and the cache stores kv_heads x K numbers of post-RoPE keys.
- Values are cached as a rank-R latent c = A x, shared by all KV heads (Palu / MLA): the
  attention's weighted sum is taken over c and then mapped up, o_h = (sum_t p_t c_t) B_h^T, so
  the values are never rebuilt for past tokens and decoding reads R numbers per token.

The cache then holds kv_heads * K + R numbers per token and layer (Gemma 3 270M at K = R = 128:
256, half of its own 512). At full width (all pairs, R = kv_heads * head_dim) the layer equals the
original. Healing (`factorize --heal`) trains A, B and the q/k projections that feed the kept pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from tjdkit.errors import TjdkitError
from tjdkit.factorize.modeling_tjdkit_factorized import LatentKVAttention
from tjdkit.factorize.tucker import AttentionShape, attention_shape

LatentRank = tuple[int, int]  # (K: key dims kept per KV head, R: value latent rank)
LATENT_RANK_HELP = "use 'auto' (half the cache) or 'K,R' like 128,128 (K key dims per KV head, even; R value rank)"

def parse_latent_rank(spec: str):
    """"auto", or (K, R) from "128,128"."""
    from tjdkit.factorize.specs import parse_rank_list

    return parse_rank_list(spec, 2, "latent rank", LATENT_RANK_HELP)


def check_latent_rank(rank: Sequence[int], shape: AttentionShape) -> LatentRank:
    if len(rank) != 2:
        raise TjdkitError(f"expected 2 latent ranks (K key dims, R value rank), got {len(rank)}")
    k, r = (int(x) for x in rank)
    if k < 2 or k > shape.head_dim or k % 2:
        raise TjdkitError(f"latent key dims K={k} must be even and between 2 and the head size {shape.head_dim} (RoPE pairs)")
    if r < 1 or r > shape.kv_heads * shape.head_dim:
        raise TjdkitError(f"latent value rank R={r} must be between 1 and {shape.kv_heads * shape.head_dim}")
    return (k, r)


def auto_latent_rank(shape: AttentionShape) -> LatentRank:
    """Half of the dense cache: half of each key's pairs, and a latent half the values' width."""
    k = max(2, (shape.head_dim // 2) // 2 * 2)
    return (k, max(1, shape.kv_heads * shape.head_dim // 2))


def latent_kv_numbers_per_token(rank: Sequence[int], shape: AttentionShape) -> int:
    return shape.kv_heads * int(rank[0]) + int(rank[1])


# ---- converting a layer ---------------------------------------------------------------------------


@dataclass
class LatentLayerReport:
    rank: LatentRank
    key_share: float  # of the calibration score mass (sum of pair norm products) the kept pairs hold
    value_error: float  # relative error of the values on calibration inputs (or the weights, without)
    parameters_before: int
    parameters_after: int
    kv_numbers_before: int
    kv_numbers_after: int


@torch.no_grad()
def _pair_scores(attn: nn.Module, shape: AttentionShape, inputs: Optional[Tensor]) -> Tensor:
    """[d_h/2]: E||q_pair|| * E||k_pair|| (norms are rotation-invariant, so RoPE does not matter)."""
    half = shape.head_dim // 2
    if inputs is None:  # data-free: the weights' row norms stand in for the activations
        q = attn.q_proj.weight.float().view(shape.heads, shape.head_dim, -1).norm(dim=-1)  # [h, d_h]
        k = attn.k_proj.weight.float().view(shape.kv_heads, shape.head_dim, -1).norm(dim=-1)  # [kv, d_h]
        q_pairs = (q[:, :half] ** 2 + q[:, half:] ** 2).sqrt().mean(0)
        k_pairs = (k[:, :half] ** 2 + k[:, half:] ** 2).sqrt().mean(0)
        return q_pairs * k_pairs
    x = inputs.to(attn.q_proj.weight)
    q = attn.q_proj(x).view(-1, shape.heads, shape.head_dim)  # [N, h, d_h]
    k = attn.k_proj(x).view(-1, shape.kv_heads, shape.head_dim)
    if getattr(attn, "q_norm", None) is not None:
        q = attn.q_norm(q)
    if getattr(attn, "k_norm", None) is not None:
        k = attn.k_norm(k)
    q, k = q.float(), k.float()
    q_pairs = (q[..., :half] ** 2 + q[..., half:] ** 2).sqrt().mean(dim=(0, 1))  # [d_h/2]
    k_pairs = (k[..., :half] ** 2 + k[..., half:] ** 2).sqrt().mean(dim=(0, 1))
    return q_pairs * k_pairs


def convert_latent_layer(layer: nn.Module, config: Any, rank: Sequence[int], calibration_inputs: Optional[Tensor] = None) -> LatentLayerReport:
    """Replace `layer.self_attn` by a LatentKVAttention of `rank` (K key dims, R value rank).

    calibration_inputs [N, d_model] (the attention's inputs on real text) choose the kept key pairs
    by their score mass and weigh the value SVD by the inputs' feature RMS (activation-aware);
    without them the weights alone decide.
    """
    from tjdkit.factorize.tucker import activation_scale

    attn = layer.self_attn
    if isinstance(attn, LatentKVAttention):
        raise TjdkitError("this attention layer is already converted to a latent KV cache")
    shape = attention_shape(attn, config)
    k, r = check_latent_rank(rank, shape)
    scores = _pair_scores(attn, shape, calibration_inputs)
    kept = torch.sort(torch.topk(scores, k // 2).indices).values
    key_share = float(scores[kept].sum() / scores.sum().clamp_min(1e-30))

    weight = attn.v_proj.weight.detach().float()  # [kv*d_h, d_model]
    scale = activation_scale(calibration_inputs) if calibration_inputs is not None else torch.ones(weight.shape[1])
    scale = scale.to(weight)
    u, s, vt = torch.linalg.svd(weight * scale[None, :], full_matrices=False)  # W diag(s) = U S V^T
    up = u[:, :r] * s[:r]  # B [kv*d_h, R]
    down = vt[:r] / scale[None, :]  # A [R, d_model]: W ~ B A
    if calibration_inputs is not None:
        x = calibration_inputs.float().to(weight.device)
        value_error = float(torch.linalg.vector_norm(x @ (weight - up @ down).T) / torch.linalg.vector_norm(x @ weight.T).clamp_min(1e-30))
    else:
        value_error = float(torch.linalg.vector_norm(weight - up @ down) / torch.linalg.vector_norm(weight).clamp_min(1e-30))

    parameters_before = attn.v_proj.weight.numel()
    latent = LatentKVAttention(attn, config, (k, r))
    with torch.no_grad():
        latent.kept_pairs.copy_(kept.to(latent.kept_pairs.device))
        latent.v_down.weight.copy_(down.to(latent.v_down.weight))
        latent.v_up.weight.copy_(up.to(latent.v_up.weight))
        if attn.v_proj.bias is not None:
            latent.v_up.bias.copy_(attn.v_proj.bias)
    layer.self_attn = latent
    return LatentLayerReport(
        rank=(k, r),
        key_share=key_share,
        value_error=value_error,
        parameters_before=parameters_before,
        parameters_after=latent.num_parameters(),
        kv_numbers_before=2 * shape.kv_heads * shape.head_dim,
        kv_numbers_after=latent_kv_numbers_per_token((k, r), shape),
    )


def install_empty_latent(layer: nn.Module, config: Any, rank: Sequence[int]) -> LatentKVAttention:
    """Replace `layer.self_attn` by a LatentKVAttention of `rank` to load saved weights into."""
    latent = LatentKVAttention(layer.self_attn, config, tuple(int(x) for x in rank))
    layer.self_attn = latent
    return latent


def key_dims_note(shape: AttentionShape) -> str:
    return f"{shape.head_dim // 2} RoPE pairs per head"


__all__ = [
    "LATENT_RANK_HELP",
    "LatentKVAttention",
    "LatentLayerReport",
    "auto_latent_rank",
    "check_latent_rank",
    "convert_latent_layer",
    "install_empty_latent",
    "latent_kv_numbers_per_token",
    "parse_latent_rank",
]
