"""Factorised attention (shared-factor Tucker, Tensor Product Attention) as modules, and the
entry points that load a saved factorised model directory in plain transformers.

One truth: tjdkit.factorize.tucker and .tpa import these modules and run them, and
`save_factorized` copies this very file into every directory whose attention is factorised,
with an `auto_map` in its config.json, so that

    AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)

builds the same model without tjdkit. So this file imports torch and transformers only.
Such a directory's config has model_type "tjdkit_factorized", which transformers does not
know: without trust_remote_code it refuses the directory instead of building the dense
architecture and silently re-initialising the attention. tjdkit itself never imports the
copy in a directory; it loads these directories with its own installed code.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Optional

import torch
import torch.nn as nn
from torch import Tensor

MODEL_TYPE = "tjdkit_factorized"
METADATA_KEY = "tjdkit_factorization"
ROLES = ("q", "k", "v", "o")
TPA_ROLES = ("q", "k", "v")
METHODS = ("tucker", "tpa", "latent")  # what `install_empty_factorized` builds
# Attributes of the original attention that its forward (or the model around it) reads.
_KEPT_ATTRIBUTES = ("scaling", "attention_dropout", "is_causal", "sliding_window", "layer_type", "is_sliding")


# ---- shared-factor Tucker --------------------------------------------------------------------


class FactorizedAttentionProjections(nn.Module):
    """The factors of one attention layer and the maths of its four projections.

    Registered on the attention as `tucker`; q_proj..o_proj become `TuckerProjection`s
    that call into it, so each tensor is stored once. The role factor is folded into
    per-role cores, and K/V cores are averaged over the query heads of each KV head, so
    the outputs equal `materialize`'s dense weights and the KV cache keeps its size.

        u_dmodel  [d_model, R1]            shared by all heads and roles
        u_headdim [head_dim, R2]           shared by all heads and roles
        core_q    [heads, R1, R2]          core_k, core_v [kv_heads, R1, R2]   core_o [heads, R1, R2]
        bias_q .. bias_o                   the original biases, when the layer has them
    """

    def __init__(
        self,
        u_dmodel: Tensor,
        u_headdim: Tensor,
        cores: dict[str, Tensor],
        biases: Optional[dict[str, Optional[Tensor]]] = None,
    ):
        super().__init__()
        self.u_dmodel = nn.Parameter(u_dmodel)
        self.u_headdim = nn.Parameter(u_headdim)
        for role in ROLES:
            setattr(self, f"core_{role}", nn.Parameter(cores[role]))
            bias = (biases or {}).get(role)
            setattr(self, f"bias_{role}", None if bias is None else nn.Parameter(bias))

    @classmethod
    def from_tucker(
        cls, tucker: Any, shape: Any, biases: Optional[dict[str, Optional[Tensor]]] = None
    ) -> "FactorizedAttentionProjections":
        s = shape
        sizes = (tucker.u_dmodel.shape[0], tucker.u_headdim.shape[0], tucker.core.shape[3])
        if sizes != (s.d_model, s.head_dim, s.heads):
            raise ValueError(f"decomposition with core {tuple(tucker.core.shape)} does not fit {s}")
        g = tucker.role_cores()  # [4, heads, R1, R2]
        r1, r2 = g.shape[-2:]
        cores = {
            "q": g[0],
            "k": g[1].reshape(s.kv_heads, s.group, r1, r2).mean(dim=1),  # [kv_heads, R1, R2]
            "v": g[2].reshape(s.kv_heads, s.group, r1, r2).mean(dim=1),
            "o": g[3],
        }
        cores = {role: core.contiguous() for role, core in cores.items()}
        return cls(tucker.u_dmodel.clone(), tucker.u_headdim.clone(), cores, biases)

    @classmethod
    def empty(
        cls, shape: Any, r_dmodel: int, r_headdim: int, bias: bool = False
    ) -> "FactorizedAttentionProjections":
        """Zero-filled parameters of the right shapes, for loading a saved state dict into."""
        s = shape
        cores = {role: torch.zeros(s.kv_heads if role in "kv" else s.heads, r_dmodel, r_headdim) for role in ROLES}
        kv_size = s.kv_heads * s.head_dim
        out_sizes = {"q": s.heads * s.head_dim, "k": kv_size, "v": kv_size, "o": s.d_model}
        biases = {role: torch.zeros(size) for role, size in out_sizes.items()} if bias else None
        return cls(torch.zeros(s.d_model, r_dmodel), torch.zeros(s.head_dim, r_headdim), cores, biases)

    def install(self, attn: nn.Module) -> None:
        """Register on `attn` as `tucker` and replace q/k/v/o_proj by views of this module."""
        attn.tucker = self
        for role in ROLES:
            setattr(attn, f"{role}_proj", TuckerProjection(self, role))

    def project_in(self, role: str, x: Tensor) -> Tensor:
        """q/k/v projection: x [..., d_model] -> [..., n * head_dim] (n = heads or kv_heads)."""
        core = getattr(self, f"core_{role}")  # [n, R1, R2]
        z = x @ self.u_dmodel  # [..., R1]
        z = torch.einsum("...a,nab->...nb", z, core)  # [..., n, R2]
        y = (z @ self.u_headdim.T).flatten(-2)  # [..., n, hd] -> [..., n * hd]
        bias = getattr(self, f"bias_{role}")
        return y if bias is None else y + bias

    def project_out(self, x: Tensor) -> Tensor:
        """o projection: x [..., heads * head_dim] -> [..., d_model], summing over heads."""
        heads, head_dim = self.core_o.shape[0], self.u_headdim.shape[0]
        z = x.unflatten(-1, (heads, head_dim)) @ self.u_headdim  # [..., heads, R2]
        z = torch.einsum("...hb,hab->...a", z, self.core_o)  # [..., R1]
        y = z @ self.u_dmodel.T  # [..., d_model]
        return y if self.bias_o is None else y + self.bias_o

    def dense_weight(self, role: str) -> Tensor:
        """The nn.Linear weight this role's projection equals (for checks and reports)."""
        core = getattr(self, f"core_{role}")  # [n, R1, R2]
        slices = torch.einsum("ma,nab,db->mdn", self.u_dmodel, core, self.u_headdim)  # [d_model, hd, n]
        if role == "o":
            return slices.permute(0, 2, 1).flatten(1)  # [d_model, heads * hd]
        return slices.permute(2, 1, 0).flatten(0, 1)  # [n * hd, d_model]


class TuckerProjection(nn.Module):
    """Stands in for q_proj, k_proj, v_proj or o_proj; the factors live in the shared module.

    The shared module is held without registering it here, so its parameters appear
    once in the state dict (under the attention's `tucker`), not four times.
    """

    def __init__(self, factors: FactorizedAttentionProjections, role: str):
        super().__init__()
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} (choose from {', '.join(ROLES)})")
        self.role = role
        object.__setattr__(self, "_factors", factors)

    def forward(self, x: Tensor) -> Tensor:
        if self.role == "o":
            return self._factors.project_out(x)
        return self._factors.project_in(self.role, x)

    def extra_repr(self) -> str:
        return f"role={self.role}"


# ---- Tensor Product Attention ------------------------------------------------------------------


class TpaFactors(nn.Module):
    """One role's factors: A = a(x) [..., R, h] and B = b(x) [..., R, d_h] (a.bias = a0, b.bias = b0)."""

    def __init__(self, d_model: int, heads: int, head_dim: int, rank: int):
        super().__init__()
        self.rank, self.heads, self.head_dim = rank, heads, head_dim
        self.a = nn.Linear(d_model, rank * heads, bias=True)
        self.b = nn.Linear(d_model, rank * head_dim, bias=True)
        for p in self.parameters():
            nn.init.zeros_(p)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a = self.a(x).unflatten(-1, (self.rank, self.heads))  # [..., R, h]
        b = self.b(x).unflatten(-1, (self.rank, self.head_dim))  # [..., R, d_h]
        return a, b

    def product(self, x: Tensor) -> Tensor:
        """X(x) = sum_r A_r ⊗ B_r: [..., h, d_h]."""
        a, b = self(x)
        return torch.einsum("...rh,...rd->...hd", a, b)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, heads={self.heads}, head_dim={self.head_dim}"


def _norm_eps(norm: nn.Module) -> float:
    for name in ("eps", "variance_epsilon"):
        if isinstance(getattr(norm, name, None), float):
            return getattr(norm, name)
    raise ValueError(f"unsupported norm {type(norm).__name__}: no eps or variance_epsilon")


class TpaAttention(nn.Module):
    """Drop-in for a decoder layer's `self_attn`: TPA factors tpa_q/k/v, the original o_proj and
    q_norm/k_norm (same names, so their state-dict keys stay), a KV cache of factors.

    `attn` is the original attention, whose o_proj, norms and attention function are kept;
    tjdkit.factorize.tpa checks its shapes before building one."""

    def __init__(self, attn: nn.Module, config: Any, factors: dict[str, TpaFactors]):
        super().__init__()
        self.config = getattr(attn, "config", config)
        self.layer_idx = attn.layer_idx
        self.head_dim = factors["q"].head_dim
        self.num_key_value_groups = 1  # K/V are rebuilt with one head per query head
        self.sliding_window = None
        for name in _KEPT_ATTRIBUTES:
            if hasattr(attn, name):
                setattr(self, name, getattr(attn, name))
        self.o_proj = attn.o_proj
        for name in ("q_norm", "k_norm"):
            norm = getattr(attn, name, None)
            setattr(self, name, norm if isinstance(norm, nn.Module) else None)
        reference = attn.o_proj.weight
        self.tpa_q, self.tpa_k, self.tpa_v = (
            factors[role].to(device=reference.device, dtype=reference.dtype) for role in TPA_ROLES
        )
        module = sys.modules[type(attn).__module__]
        self._eager_attention = module.eager_attention_forward
        self._apply_rope = module.apply_rotary_pos_emb

    @property
    def rank(self) -> tuple[int, int, int]:
        return (self.tpa_q.rank, self.tpa_k.rank, self.tpa_v.rank)

    def num_parameters(self) -> int:
        """Parameters of the factors tpa_q/k/v (o_proj and norms are the original's)."""
        return sum(p.numel() for f in (self.tpa_q, self.tpa_k, self.tpa_v) for p in f.parameters())

    def extra_repr(self) -> str:
        return f"rank={self.rank}"

    def _fold_k_norm(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """k_norm applied to the factors: A' = s_h A, B' = g ⊙ B (module doc). a [..., R, h], b [..., R, d_h]."""
        eps = _norm_eps(self.k_norm)
        k = torch.einsum("...rh,...rd->...hd", a.float(), b.float())  # [..., h, d_h]
        inv_rms = torch.rsqrt(k.pow(2).mean(-1) + eps)  # [..., h]
        ones = torch.ones(self.head_dim, device=b.device, dtype=torch.float32)
        gain = self.k_norm(ones).float() * math.sqrt(1.0 + eps)  # [d_h]: w, or 1 + w for Gemma
        return (a.float() * inv_rms.unsqueeze(-2)).to(a.dtype), (b.float() * gain).to(b.dtype)

    @staticmethod
    def _pack(a: Tensor, b: Tensor) -> Tensor:
        """a [b, s, R, h], b [b, s, R, d_h] -> one cache entry [b, 1, s, R*(h+d_h)]."""
        return torch.cat([a.flatten(-2), b.flatten(-2)], dim=-1).unsqueeze(1)

    @staticmethod
    def _expand(packed: Tensor, factors: TpaFactors) -> Tensor:
        """Cached factors [b, 1, S, R*(h+d_h)] -> K or V [b, h, S, d_h]."""
        r, h, d = factors.rank, factors.heads, factors.head_dim
        packed = packed[:, 0]  # [b, S, R*(h+d_h)]
        a = packed[..., : r * h].unflatten(-1, (r, h))  # [b, S, R, h]
        b = packed[..., r * h :].unflatten(-1, (r, d))  # [b, S, R, d_h]
        return torch.einsum("bsrh,bsrd->bhsd", a, b)

    def forward(
        self,
        hidden_states: Tensor,
        position_embeddings: Optional[tuple[Tensor, Tensor]] = None,
        attention_mask: Optional[Tensor] = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> tuple[Tensor, Optional[Tensor]]:
        input_shape = hidden_states.shape[:-1]  # [b, s]
        query = self.tpa_q.product(hidden_states).transpose(1, 2)  # [b, h, s, d_h]
        if self.q_norm is not None:
            query = self.q_norm(query)
        a_k, b_k = self.tpa_k(hidden_states)  # [b, s, R_k, h], [b, s, R_k, d_h]
        a_v, b_v = self.tpa_v(hidden_states)  # [b, s, R_v, h], [b, s, R_v, d_h]
        if self.k_norm is not None:
            a_k, b_k = self._fold_k_norm(a_k, b_k)

        cos, sin = position_embeddings
        query, b_k = self._apply_rope(query, b_k.transpose(1, 2), cos, sin)  # b_k [b, R_k, s, d_h]
        key, value = self._pack(a_k, b_k.transpose(1, 2)), self._pack(a_v, b_v)  # [b, 1, s, R*(h+d_h)]
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)  # [b, 1, S, ...]
        key, value = self._expand(key, self.tpa_k), self._expand(value, self.tpa_v)  # [b, h, S, d_h]

        attn_output, attn_weights = _attend(self, query, key, value, attention_mask, **kwargs)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()  # [b, s, h*d_h]
        return self.o_proj(attn_output), attn_weights


# ---- latent KV: partial-RoPE keys and a low-rank value latent (tjdkit.factorize.latent) -----


class LatentKVAttention(nn.Module):
    """Drop-in `self_attn` with a cache of partial-RoPE keys [kv, K] and a value latent [R]."""

    def __init__(self, original: nn.Module, config: Any, rank: tuple[int, int]):
        super().__init__()
        d_model, head_dim, heads, kv_heads = _sizes(original, config)
        self.shape_info = (d_model, head_dim, heads, kv_heads)
        self.config, self.layer_idx = config, getattr(original, "layer_idx", None)
        self.num_key_value_groups = heads // kv_heads
        self.attn_logit_softcapping = getattr(original, "attn_logit_softcapping", None)
        for name in _KEPT_ATTRIBUTES:
            if hasattr(original, name):
                setattr(self, name, getattr(original, name))
        self.q_proj, self.k_proj, self.o_proj = original.q_proj, original.k_proj, original.o_proj
        self.q_norm = getattr(original, "q_norm", None)
        self.k_norm = getattr(original, "k_norm", None)
        module = sys.modules[type(original).__module__]  # the architecture's own eager attention and RoPE
        self._eager_attention = module.eager_attention_forward
        self._apply_rope = module.apply_rotary_pos_emb
        k, r = rank
        reference = original.v_proj.weight
        self.v_down = nn.Linear(d_model, r, bias=False).to(reference)  # A: x -> c [R]
        self.v_up = nn.Linear(r, kv_heads * head_dim, bias=original.v_proj.bias is not None).to(reference)  # B
        self.register_buffer("kept_pairs", torch.arange(k // 2), persistent=True)  # [K/2] pair indices (i, i + d_h/2)
        self.rank = (k, r)

    @property
    def key_dims(self) -> Tensor:
        """[K]: the kept dims of a head, pairs in half-split order (i..., i + d_h/2 ...)."""
        half = self.shape_info[1] // 2
        return torch.cat([self.kept_pairs, self.kept_pairs + half])

    def num_parameters(self) -> int:
        return self.v_down.weight.numel() + self.v_up.weight.numel()

    def _queries_keys(self, hidden_states: Tensor, position_embeddings) -> tuple[Tensor, Tensor]:
        """Post-norm, post-RoPE queries [b, h, s, K] and keys [b, kv, s, K] on the kept dims."""
        _, head_dim, _, _ = self.shape_info
        shape = (*hidden_states.shape[:-1], -1, head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)  # [b, h, s, d_h]
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)  # [b, kv, s, d_h]
        if self.q_norm is not None:
            query = self.q_norm(query)
        if self.k_norm is not None:  # the norm sees the whole key: its RMS is over all d_h dims
            key = self.k_norm(key)
        cos, sin = position_embeddings  # [b, s, d_h]
        query, key = self._apply_rope(query, key, cos, sin)
        dims = self.key_dims.to(query.device)
        return query.index_select(-1, dims), key.index_select(-1, dims)

    def forward(
        self,
        hidden_states: Tensor,
        position_embeddings: Optional[tuple[Tensor, Tensor]] = None,
        attention_mask: Optional[Tensor] = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> tuple[Tensor, Optional[Tensor]]:
        _, head_dim, heads, kv_heads = self.shape_info
        input_shape = hidden_states.shape[:-1]  # [b, s]
        query, key = self._queries_keys(hidden_states, position_embeddings)
        latent = self.v_down(hidden_states).unsqueeze(1)  # [b, 1, s, R]
        if cache is not None:
            key, latent = cache.update(key, latent, self.layer_idx)  # [b, kv, S, K], [b, 1, S, R]
        value = latent.expand(latent.shape[0], kv_heads, *latent.shape[2:])  # the same latent for every KV head
        mixed, weights = _attend(self, query, key, value, attention_mask, **kwargs)  # mixed [b, s, h, R]
        up = self.v_up.weight.view(kv_heads, head_dim, -1)  # [kv, d_h, R]
        group = heads // kv_heads
        mixed = mixed.unflatten(2, (kv_heads, group))  # [b, s, kv, g, R]
        out = torch.einsum("bskgr,kdr->bskgd", mixed, up).flatten(2, 3)  # [b, s, h, d_h]
        if self.v_up.bias is not None:  # the weights sum to 1, so the bias passes through
            out = out + self.v_up.bias.view(kv_heads, 1, head_dim).expand(kv_heads, group, head_dim).reshape(heads, head_dim)
        out = out.reshape(*input_shape, -1).contiguous()  # [b, s, h*d_h]
        return self.o_proj(out), weights


def _attend(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Optional[Tensor], **kwargs: Any):
    """The architecture's own attention kernel (config._attn_implementation, else its eager one) on
    query [b, h, s, E], key [b, kv, S, E], value [b, kv, S, Ev] -> ([b, s, h, Ev], weights)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    interface = ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, module._eager_attention)
    return interface(
        module,
        query,
        key,
        value,
        attention_mask,
        dropout=module.attention_dropout if module.training else 0.0,
        scaling=module.scaling,
        sliding_window=getattr(module, "sliding_window", None),
        **kwargs,
    )


# ---- loading a saved directory in plain transformers --------------------------------------------


def _sizes(attn: nn.Module, config: Any) -> tuple[int, int, int, int]:
    """(d_model, head_dim, heads, kv_heads) of one attention, from its config and q_proj."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    d_model = attn.q_proj.in_features
    head_dim = getattr(text_config, "head_dim", None) or d_model // heads
    return d_model, head_dim, heads, kv_heads


class _Shape:
    """The fields of tjdkit's AttentionShape that `FactorizedAttentionProjections.empty` reads."""

    def __init__(self, d_model: int, head_dim: int, heads: int, kv_heads: int):
        self.d_model, self.head_dim, self.heads, self.kv_heads = d_model, head_dim, heads, kv_heads


def install_empty_factorized(model: nn.Module, config: Any) -> None:
    """Swap in zero-filled factorised attention of the ranks the config records, layer by layer,
    so that loading the saved state dict fills every parameter."""
    metadata = getattr(config, METADATA_KEY, None) or {}
    method = metadata.get("method")
    layers = model.base_model.layers
    for key, entry in (metadata.get("layers") or {}).items():
        layer = layers[int(key)]
        ranks = [int(r) for r in entry["ranks"]]
        attn = layer.self_attn
        d_model, head_dim, heads, kv_heads = _sizes(attn, config)
        if method == "tucker":
            shape = _Shape(d_model, head_dim, heads, kv_heads)
            bias = attn.q_proj.bias is not None
            FactorizedAttentionProjections.empty(shape, ranks[0], ranks[1], bias=bias).install(attn)
        elif method == "tpa":
            factors = {role: TpaFactors(d_model, heads, head_dim, r) for role, r in zip(TPA_ROLES, ranks)}
            layer.self_attn = TpaAttention(attn, config, factors)
        elif method == "latent":
            layer.self_attn = LatentKVAttention(attn, config, (ranks[0], ranks[1]))
        else:
            raise ValueError(f"unknown factorization method {method!r}")


def base_config(config_dict: dict, **kwargs: Any):
    """The config of the architecture that was factorised (Llama, Gemma 3, ...), with the
    factorisation record and auto_map kept as attributes. `kwargs` as for `from_dict`."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    metadata = config_dict.get(METADATA_KEY) or {}
    base_type = metadata.get("base_model_type") or config_dict.get("model_type")
    if base_type not in CONFIG_MAPPING:
        raise ValueError(f"this factorised model's architecture {base_type!r} is unknown to transformers")
    return CONFIG_MAPPING[base_type].from_dict({**config_dict, "model_type": base_type}, **kwargs)


CODE_FILE = "modeling_tjdkit_factorized.py"
AUTO_MAP = {
    "AutoConfig": "modeling_tjdkit_factorized.TjdkitFactorizedConfig",
    "AutoModelForCausalLM": "modeling_tjdkit_factorized.TjdkitFactorizedForCausalLM",
}


def write_remote_code(directory: Any, code: bool = True) -> None:
    """Make a saved directory with factorised modules load only with this code: copy this file
    in, and rewrite config.json with model_type tjdkit_factorized (unknown to transformers, so
    without trust_remote_code it is refused), the base architecture's type kept in the record.
    code=False (a method this file does not build): the model type only, so plain transformers
    refuses the directory rather than re-initialising its attention."""
    import json
    import shutil
    from pathlib import Path

    directory = Path(directory)
    if code and Path(__file__).resolve() != (directory / CODE_FILE).resolve():
        shutil.copyfile(__file__, directory / CODE_FILE)
    path = directory / "config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    record = data[METADATA_KEY]
    if data["model_type"] != MODEL_TYPE:
        record["base_model_type"] = data["model_type"]
    data["model_type"] = MODEL_TYPE
    if code:
        data["auto_map"] = AUTO_MAP
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


class TjdkitFactorizedConfig:
    """auto_map's AutoConfig: reads config.json and returns the base architecture's config."""

    model_type = MODEL_TYPE

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoConfig") -> None:
        """Nothing to register: the config returned is the base architecture's own class."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs: Any):
        from transformers import PreTrainedConfig

        config_dict, kwargs = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **kwargs)
        return base_config(config_dict, **kwargs)


_MODEL_CLASSES: dict[type, type] = {}


class TjdkitFactorizedForCausalLM:
    """auto_map's AutoModelForCausalLM: the base architecture's causal LM class whose
    constructor installs the recorded factorised attention before the weights load."""

    @classmethod
    def register_for_auto_class(cls, auto_class: Any = "AutoModelForCausalLM") -> None:
        """Nothing to register: the model class is derived from the config at load time."""

    @staticmethod
    def model_class(config: Any) -> type:
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM._model_mapping[type(config)]
        if base not in _MODEL_CLASSES:

            def __init__(self, config, *args, **kwargs):
                base.__init__(self, config, *args, **kwargs)
                install_empty_factorized(self, config)

            def save_pretrained(self, save_directory, *args, **kwargs):
                """A re-saved model stays one that needs this code (never a dense model with missing weights)."""
                result = base.save_pretrained(self, save_directory, *args, **kwargs)
                if kwargs.get("is_main_process", True):
                    write_remote_code(save_directory)
                return result

            methods = {"__init__": __init__, "save_pretrained": save_pretrained, "__module__": __name__}
            _MODEL_CLASSES[base] = type(base.__name__, (base,), methods)
        return _MODEL_CLASSES[base]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args: Any, config: Any = None, **kwargs: Any):
        kwargs.pop("trust_remote_code", None)
        kwargs.pop("adapter_kwargs", None)
        if config is None:
            config = TjdkitFactorizedConfig.from_pretrained(pretrained_model_name_or_path)
        return cls.model_class(config).from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any):
        return cls.model_class(config)._from_config(config, **kwargs)
