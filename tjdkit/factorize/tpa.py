"""Tensor Product Attention (T6, Zhang et al. 2025) from a trained attention, with a KV cache of factors.

    rank = check_tpa_rank(parse_tpa_rank("2,1,1"), attention_shape(layer.self_attn, config))
    report = convert_layer(layer, config, rank, calibration_inputs=x)   # x: the attention's inputs [N, d_model]
    install_empty(layer, config, rank)                                   # before load_state_dict of a saved model

Notation: one token x [d_model]; h query heads; n distinct heads of a role (h for q, kv_heads for
k and v); d_h the head dim. TPA writes each role X in {q, k, v} as a sum of R outer products,
with h heads for every role:

    X(x) = sum_{r<R} A_r(x) ⊗ B_r(x)     [h, d_h]
    A(x) = W_A x + a0                     [R, h]      W_A [R*h, d_model]
    B(x) = W_B x + b0                     [R, d_h]    W_B [R*d_h, d_model]

(T6's 1/R is folded into A.) Why a trained model converts at all (T6 §3): MHA, MQA and GQA are
the non-contextual case W_A = 0 with R = n, a0[r] = indicator of the query heads that use head r,
and W_B^r, b0^r = head r's weight and bias, so a full-rank conversion is exact.

Initialisation at rank R < n: stack each distinct head's [W^j | b^j] (bias column zero when the
projection has none) as a row of M [n, d_h*(d_model+1)] and truncate its SVD, M ≈ U_R S_R V_R^T:
a0 = (U_R S_R^1/2)^T [R, n], expanded to query heads (head i reads column i // group), [W_B | b0]
= S_R^1/2 V_R^T, W_A = 0. That is the best non-contextual TPA of the weights, with relative weight
error sqrt(sum_{r>=R} s_r^2 / sum_r s_r^2) for the singular values s of M (`head_spectra`).

Calibration then makes the factors contextual: full-batch Adam on (W_A, a0, W_B, b0) of the
relative squared error ||X_tpa(x) - X(x)||^2 / ||X(x)||^2 summed over the calibration tokens, per
role, before any norm, keeping the best parameters seen. It fits what the layer computes on the
inputs it sees rather than the weights, and never ends worse than the SVD initialisation.

Norms and positions act on the d_h axis only, so they go into B (and a per-head scale into A):
- RoPE is linear on d_h: RoPE(X) = sum_r A_r ⊗ RoPE(B_r). The cache holds rotated B.
- A q/k RMSNorm over d_h (Gemma 3, before RoPE) maps X_h to s_h g ⊙ X_h, with s_h = rsqrt(mean_d
  X_h^2 + eps) per token and head and g the gain. For K, s is computed once from the product and
  folded into A (A'[r, h] = s_h A[r, h]), g into B (B' = g ⊙ B). Q is not cached: it is
  materialised and normed like the original.

The KV cache holds factors: per token, key = [A'_k (R_k*h) | RoPE(B'_k) (R_k*d_h)] and value =
[A_v | B_v], as tensors [batch, 1, seq, R*(h+d_h)]. HF's dynamic and sliding-window cache layers
only concatenate and slice along dim -2, so they carry any last dim and still crop for speculative
decoding; static caches preallocate [batch, kv_heads, len, d_h] and do not fit. K, V [batch, h, S,
d_h] are rebuilt from the cached factors by einsum and passed to the model's own attention
function with num_key_value_groups = 1.

Cache size per token and layer: (R_k + R_v)(h + d_h) numbers against 2 * kv_heads * d_h. It
shrinks only caches with many KV heads: multi-head (kv_heads = h) goes from 2 h d_h to 2(h + d_h)
at rank 1. Multi-query caches are already small: Gemma 3 270M (h = 4, kv_heads = 1, d_h = 256)
caches 512 numbers, TPA at R_k = R_v = 1 needs 520 - no saving.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from tjdkit.errors import TjdkitError
from tjdkit.factorize import modeling_tjdkit_factorized as _modeling
from tjdkit.factorize.modeling_tjdkit_factorized import TPA_ROLES, TpaFactors
from tjdkit.factorize.rank import auto_ranks
from tjdkit.factorize.specs import parse_rank_list
from tjdkit.factorize.tucker import AttentionShape, attention_shape

TpaRank = tuple[int, int, int]  # (R_q, R_k, R_v)
TpaRankSpec = Union[Literal["auto"], TpaRank]

TPA_RANK_HELP = "use 'auto' or three positive integers 'R_q,R_k,R_v' like '2,1,1'"


# ---- specs and sizes --------------------------------------------------------------------


def parse_tpa_rank(spec: str) -> TpaRankSpec:
    """"auto", or the ranks (R_q, R_k, R_v) of "2,1,1"."""
    return parse_rank_list(spec, len(TPA_ROLES), "TPA rank", TPA_RANK_HELP)  # type: ignore[return-value]


def _role_heads(shape: AttentionShape) -> dict[str, int]:
    """Distinct heads per role: the largest rank the SVD initialisation can have."""
    return {"q": shape.heads, "k": shape.kv_heads, "v": shape.kv_heads}


def check_tpa_rank(rank: Sequence[int], shape: AttentionShape) -> TpaRank:
    """`rank` as a tuple, after checking R_q in 1..heads and R_k, R_v in 1..kv_heads."""
    if len(rank) != len(TPA_ROLES):
        raise TjdkitError(f"expected 3 TPA ranks (R_q, R_k, R_v), got {len(rank)}")
    limits = _role_heads(shape)
    for role, r in zip(TPA_ROLES, rank):
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise TjdkitError(f"TPA rank for {role} must be a positive integer, got {r!r}")
        if r > limits[role]:
            what = "query heads" if role == "q" else "KV heads"
            raise TjdkitError(f"TPA rank {r} for {role} exceeds the layer's {limits[role]} {what}")
    return tuple(int(r) for r in rank)  # type: ignore[return-value]


def kv_numbers_per_token(rank: Sequence[int], shape: AttentionShape) -> int:
    """Numbers the factor cache holds per token and layer: (R_k + R_v)(h + d_h)."""
    return (rank[1] + rank[2]) * (shape.heads + shape.head_dim)


def dense_kv_numbers_per_token(shape: AttentionShape) -> int:
    """Numbers the original K/V cache holds per token and layer: 2 * kv_heads * d_h."""
    return 2 * shape.kv_heads * shape.head_dim


# ---- spectra and initialisation ------------------------------------------------------------


def _checked_shape(attn: nn.Module, config: Any) -> AttentionShape:
    if isinstance(attn, _modeling.TpaAttention):
        raise TjdkitError("this attention layer is already converted to TPA")
    shape = attention_shape(attn, config)
    if getattr(attn, "attn_logit_softcapping", None) is not None:
        raise TjdkitError(f"unsupported attention {type(attn).__name__}: attention logit soft-capping")
    module = sys.modules[type(attn).__module__]
    for name in ("eager_attention_forward", "apply_rotary_pos_emb"):
        if not callable(getattr(module, name, None)):
            raise TjdkitError(f"unsupported attention {type(attn).__name__}: its module has no {name}")
    return shape


def _head_matrix(attn: nn.Module, shape: AttentionShape, role: str) -> Tensor:
    """M [n, d_h, d_model+1] in float32: head j's weight W^j [d_h, d_model] and bias (or zeros)."""
    proj = getattr(attn, f"{role}_proj")
    n = _role_heads(shape)[role]
    weight = proj.weight.detach().float().view(n, shape.head_dim, shape.d_model)
    bias = torch.zeros(n * shape.head_dim, device=weight.device) if proj.bias is None else proj.bias.detach()
    return torch.cat([weight, bias.float().view(n, shape.head_dim, 1)], dim=-1)


def head_spectra(attn: nn.Module, config: Any) -> dict[str, Tensor]:
    """Per role, the singular values (descending, float32) of M [n, d_h*(d_model+1)]."""
    shape = _checked_shape(attn, config)
    return {role: torch.linalg.svdvals(_head_matrix(attn, shape, role).flatten(1)) for role in TPA_ROLES}


def auto_tpa_ranks(spectra: dict[str, Tensor], energy: float) -> TpaRank:
    """Per role, the smallest R keeping `energy` of sum s^2 (1.0: full rank)."""
    # auto_ranks takes any three spectra; here they are the roles', not Tucker modes'.
    return auto_ranks([spectra[role] for role in TPA_ROLES], energy)


def _kv_of_head(shape: AttentionShape, role: str, device: torch.device) -> Tensor:
    """[h]: the distinct head of `role` that query head i uses."""
    group = 1 if role == "q" else shape.group
    return torch.arange(shape.heads, device=device) // group


def _svd_factors(attn: nn.Module, shape: AttentionShape, rank: TpaRank) -> dict[str, TpaFactors]:
    """Float32 factors from the truncated SVD of each role's M (module doc); exact at full rank."""
    s = shape
    factors = {}
    for role, r in zip(TPA_ROLES, rank):
        m = _head_matrix(attn, s, role)  # [n, d_h, d_model+1]
        u, sv, vt = torch.linalg.svd(m.flatten(1), full_matrices=False)  # [n, n], [n], [n, d_h*(d_model+1)]
        root = sv[:r].sqrt()
        a0 = (u[:, :r] * root).T[:, _kv_of_head(s, role, m.device)]  # [R, h]
        wb = (root[:, None] * vt[:r]).view(r, s.head_dim, s.d_model + 1)  # [R, d_h, d_model+1]
        f = TpaFactors(s.d_model, s.heads, s.head_dim, r).to(m.device)
        with torch.no_grad():
            f.a.bias.copy_(a0.reshape(-1))
            f.b.weight.copy_(wb[..., :-1].reshape(r * s.head_dim, s.d_model))
            f.b.bias.copy_(wb[..., -1].reshape(-1))
        factors[role] = f
    return factors


# ---- the attention ---------------------------------------------------------------------------


class TpaAttention(_modeling.TpaAttention):
    """Drop-in for a decoder layer's `self_attn` (the maths is in modeling_tjdkit_factorized, the
    file saved directories carry); this subclass checks the attention and builds the factors."""

    def __init__(self, attn: nn.Module, config: Any, factors: dict[str, TpaFactors]):
        _checked_shape(attn, config)
        super().__init__(attn, config, factors)

    @classmethod
    def from_attention(cls, attn: nn.Module, config: Any, rank: Sequence[int]) -> "TpaAttention":
        """Factors from the truncated SVD of the heads (exact at full rank)."""
        shape = _checked_shape(attn, config)
        return cls(attn, config, _svd_factors(attn, shape, check_tpa_rank(rank, shape)))

    @classmethod
    def empty(cls, attn: nn.Module, config: Any, rank: Sequence[int]) -> "TpaAttention":
        """Zero factors of the right shapes, to load a saved state dict into."""
        s = _checked_shape(attn, config)
        rank = check_tpa_rank(rank, s)
        factors = {role: TpaFactors(s.d_model, s.heads, s.head_dim, r) for role, r in zip(TPA_ROLES, rank)}
        return cls(attn, config, factors)


# ---- conversion -------------------------------------------------------------------------------


@dataclass
class TpaLayerReport:
    rank: TpaRank
    errors_init: dict[str, float]  # relative error per role: on the calibration inputs, else of the weights
    errors_refined: dict[str, float]  # the same after refinement (= errors_init when there was none)
    parameters_before: int  # the dense q/k/v_proj parameters
    parameters_after: int  # the factors'
    kv_numbers_before: int  # per token and layer
    kv_numbers_after: int
    weight_errors: dict[str, float] = field(default_factory=dict)  # of the SVD initialisation's weights


def _weight_error(factors: TpaFactors, m: Tensor, kv_of_head: Tensor) -> float:
    """||[W|b]_TPA - [W|b]|| / ||[W|b]|| over query heads, for factors with W_A = 0."""
    r, h, d = factors.rank, factors.heads, factors.head_dim
    a0 = factors.a.bias.detach().view(r, h)
    wb = torch.cat([factors.b.weight.detach(), factors.b.bias.detach()[:, None]], dim=1).view(r, d, -1)
    approx = torch.einsum("rh,rdm->hdm", a0, wb)  # [h, d_h, d_model+1]
    target = m[kv_of_head]  # [h, d_h, d_model+1]
    return float(torch.linalg.vector_norm(approx - target) / torch.linalg.vector_norm(target))


VALIDATION_SHARE = 0.25  # of the calibration tokens, held out to choose when refinement stops


def _relative_sq_error(factors: TpaFactors, x: Tensor, target: Tensor, norm: Optional[nn.Module]) -> Tensor:
    """Relative squared error of the role after its q/k norm (if any): what attention sees.

    Matching the pre-norm product instead lowers that number while the normed directions
    get worse (measured on Gemma 3 270M at R_q = 2: perplexity +424% -> +1397%).
    """
    predicted = factors.product(x)
    if norm is not None:
        predicted = norm(predicted)
    return (predicted - target).pow(2).sum() / target.pow(2).sum()


def _refine(factors: TpaFactors, fit: tuple, held: tuple, norm: Optional[nn.Module], steps: int, lr: float) -> None:
    """Full-batch Adam on the fit tokens; keeps the parameters best on the held-out tokens.

    With few calibration tokens the factors (W_B alone has R * d_h * d_model weights) overfit,
    so the held-out share decides, and refinement never ends worse there than the SVD init.
    """
    params = list(factors.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)
    best_loss, best = math.inf, None
    with torch.enable_grad():
        for step in range(steps + 1):
            with torch.no_grad():
                held_loss = _relative_sq_error(factors, *held, norm).item()
            if held_loss < best_loss:
                best_loss, best = held_loss, [p.detach().clone() for p in params]
            if step == steps:
                break
            loss = _relative_sq_error(factors, *fit, norm)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        for p, kept in zip(params, best):
            p.copy_(kept)


def _float_norm(norm: Optional[nn.Module]) -> Optional[nn.Module]:
    """A float32 copy of a q/k norm (frozen), or None when the attention has none."""
    if norm is None:
        return None
    import copy

    norm = copy.deepcopy(norm).float()
    norm.requires_grad_(False)
    return norm


def convert_layer(
    layer: nn.Module,
    config: Any,
    rank: Sequence[int],
    calibration_inputs: Optional[Tensor] = None,
    steps: int = 100,
    lr: float = 1e-3,
) -> TpaLayerReport:
    """Replace `layer.self_attn` by a TpaAttention of `rank` in the original dtype and device.

    calibration_inputs [..., d_model] are the attention's inputs (after input_layernorm) from the
    original model; with them and steps > 0, roles below full rank are refined on them in float32.
    The last VALIDATION_SHARE of the tokens is held out: it picks the step to keep, and the
    reported errors are measured on it (after the role's q/k norm).
    """
    attn = layer.self_attn
    s = _checked_shape(attn, config)
    rank = check_tpa_rank(rank, s)
    factors = _svd_factors(attn, s, rank)  # float32
    heads = {role: _head_matrix(attn, s, role) for role in TPA_ROLES}  # [n, d_h, d_model+1]
    kv_of_head = {role: _kv_of_head(s, role, heads[role].device) for role in TPA_ROLES}
    weight_errors = {role: _weight_error(factors[role], heads[role], kv_of_head[role]) for role in TPA_ROLES}
    errors_init, errors_refined = dict(weight_errors), dict(weight_errors)

    if calibration_inputs is not None:
        x = calibration_inputs.detach().reshape(-1, s.d_model).to(device=heads["q"].device, dtype=torch.float32)
        n_fit = max(1, int(round(x.shape[0] * (1 - VALIDATION_SHARE))))
        limits = _role_heads(s)
        for role, r in zip(TPA_ROLES, rank):
            m = heads[role]
            norm = _float_norm(getattr(attn, f"{role}_norm", None))
            with torch.no_grad():
                target = F.linear(x, m[..., :-1].flatten(0, 1), m[..., -1].flatten())  # original proj: [N, n*d_h]
                target = target.unflatten(-1, (limits[role], s.head_dim))[:, kv_of_head[role]]  # [N, h, d_h]
                if norm is not None:
                    target = norm(target)
                fit, held = (x[:n_fit], target[:n_fit]), (x[n_fit:], target[n_fit:])
                if held[0].shape[0] == 0:
                    held = fit
                errors_init[role] = math.sqrt(_relative_sq_error(factors[role], *held, norm).item())
            if steps > 0 and r < limits[role]:
                _refine(factors[role], fit, held, norm, steps, lr)
            with torch.no_grad():
                errors_refined[role] = math.sqrt(_relative_sq_error(factors[role], *held, norm).item())

    parameters_before = sum(p.numel() for role in TPA_ROLES for p in getattr(attn, f"{role}_proj").parameters())
    tpa = TpaAttention(attn, config, factors)
    layer.self_attn = tpa
    return TpaLayerReport(
        rank=rank,
        errors_init=errors_init,
        errors_refined=errors_refined,
        parameters_before=parameters_before,
        parameters_after=tpa.num_parameters(),
        kv_numbers_before=dense_kv_numbers_per_token(s),
        kv_numbers_after=kv_numbers_per_token(rank, s),
        weight_errors=weight_errors,
    )


def install_empty(layer: nn.Module, config: Any, rank: Sequence[int]) -> TpaAttention:
    """Replace `layer.self_attn` by an empty TpaAttention of `rank`, for loading a saved model."""
    tpa = TpaAttention.empty(layer.self_attn, config, rank)
    layer.self_attn = tpa
    return tpa
