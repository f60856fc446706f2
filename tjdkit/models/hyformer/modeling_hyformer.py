"""Hyformer (Izdebski et al. 2025) for plain transformers: config, layers, losses, body, lm/mlm/prediction heads.

The one definition of Hyformer's network. tjdkit runs it (tjdkit.models.hyformer's config.py,
layers.py, losses.py and model.py import from here and subclass only to add tjdkit's extras: the
seed's generate/from_pretrained/save, KVCache size checks, JSON helpers) and copies this file into
every Hyformer directory it saves, with an auto_map in config.json, so
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` (and AutoModel, AutoConfig)
load it in a process without tjdkit. It therefore imports torch and transformers only.
tjdkit never imports the copy in a directory; it loads Hyformer directories with its own classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils import ModelOutput as _HFModelOutput

# What config.json's auto_map names when tjdkit saves a Hyformer with this file beside it.
AUTO_MAP = {
    "AutoConfig": "modeling_hyformer.HyformerConfig",
    "AutoModel": "modeling_hyformer.HyformerModel",
    "AutoModelForCausalLM": "modeling_hyformer.Hyformer",
}

PredictionTaskType = Literal["classification", "regression", "multilabel"]
POOLING = ("first", "mean")


class HyformerConfig(PreTrainedConfig):
    """One transformer, two attention modes: causal for `lm`, bidirectional for `mlm` and `prediction`.

    `prediction_mean` / `prediction_std` hold the training targets' scale for regression:
    the prediction head learns standardised targets (so its loss weighs like the others in
    joint training) and `extras["predictions"]` gives values back in the data's units.
    """

    model_type = "hyformer"
    # The names the rest of transformers and tjdkit read (caches, heads, generation).
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "max_position_embeddings": "max_seq_len",
        "rms_norm_eps": "eps",
    }

    vocab_size: int = 32000
    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 6
    max_seq_len: int = 128
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    eps: float = 1e-6
    num_prediction_tasks: Optional[int] = None
    prediction_task_type: PredictionTaskType = "classification"
    # null: the SwiGLU rule 8/3 * d_model, rounded up to a multiple of 64.
    intermediate_size: Optional[int] = None
    rope_theta: float = 10000.0
    # Which hidden state a prediction reads: the task token's (first) or the mean over real tokens.
    pooling: str = "first"
    prediction_dropout: float = 0.0
    prediction_mean: Optional[list] = None
    prediction_std: Optional[list] = None
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: Optional[int] = None
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    mask_token_id: Optional[int] = None

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None:
            self.intermediate_size = -(-8 * self.d_model // 3 // 64) * 64
        super().__post_init__(**kwargs)
        self.check()

    def check(self) -> None:
        """Reject shapes the model cannot build, with the field's name (ValueError, as transformers does)."""
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "max_seq_len", "intermediate_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HyformerConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"HyformerConfig: d_model ({self.d_model}) must split into n_heads ({self.n_heads}) heads of even size (RoPE)"
            )
        for name in ("attn_dropout", "resid_dropout", "prediction_dropout"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ValueError(f"HyformerConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.num_prediction_tasks is not None and self.num_prediction_tasks < 1:
            raise ValueError(f"HyformerConfig.num_prediction_tasks must be >= 1 or null, got {self.num_prediction_tasks!r}")
        if self.prediction_task_type not in ("classification", "regression", "multilabel"):
            raise ValueError(
                "HyformerConfig.prediction_task_type must be classification, regression or multilabel, "
                f"got {self.prediction_task_type!r}"
            )
        if self.pooling not in POOLING:
            raise ValueError(f"HyformerConfig.pooling must be one of {', '.join(POOLING)}, got {self.pooling!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        return json.loads(json.dumps(data, default=str))  # plain JSON types (no dtype objects)


# ------------------------------------------------------------------------------------------


# Appends one layer's new keys/values to its cache and returns all of them: (k, v) -> (k_all, v_all).
CacheUpdate = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class KVCache:
    """One layer's keys and values so far, [B, H, S, d]: the cache `forward(kv_caches=...)` passes around."""

    def __init__(self, key: Optional[Tensor] = None, value: Optional[Tensor] = None):
        self.key, self.value = key, value

    def update(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
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


# ------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------


TASKS = ("lm", "mlm", "prediction")


@dataclass
class ModelOutput(_HFModelOutput):
    """logits: [B, T, V] for lm/mlm, [B, n] for prediction (standardised units for regression).
    extras: hidden_states (final, normed), kv_caches (the cache passed in, updated), and for
    prediction `predictions` in the data's units (regression) or probabilities."""

    logits: Optional[Tensor] = None
    loss: Optional[Tensor] = None
    extras: Optional[dict] = None
    cache: Any = None
    hidden_states: Optional[tuple] = None


@dataclass
class ModelInput:
    """The inputs of one forward; `model(**batch)` unpacks the fields that are set."""

    input_ids: Tensor
    task: str
    attention_mask: Optional[Tensor] = None
    labels: Optional[Tensor] = None
    targets: Optional[Tensor] = None

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def to(self, device) -> "ModelInput":
        moved = {key: value.to(device) if isinstance(value, Tensor) else value for key, value in vars(self).items()}
        return ModelInput(**moved)


class HyformerPreTrainedModel(PreTrainedModel):
    """LLaMA-style init from transformers' default: normal(0, initializer_range) for linear and
    embedding weights, zero biases, unit RMSNorm weights."""

    config_class = HyformerConfig
    base_model_prefix = "model"
    _no_split_modules = ["HyformerBlock"]
    supports_gradient_checkpointing = False


class HyformerModel(HyformerPreTrainedModel):
    """The body: embeddings, blocks, final norm. Returns the normed hidden states."""

    cache_class = KVCache  # what a layer's empty cache is made of (a subclass may check sizes)

    def __init__(self, config: HyformerConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(HyformerBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.eps)
        self.rotary = Rotary(config.head_dim, config.rope_theta)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: Tensor,  # [B, T]
        attention_mask: Optional[Tensor] = None,  # [B, T] or [B, past + T]; 1 real, 0 padding
        cache: Any = None,  # a transformers Cache, or a list of KVCache (one per layer)
        use_cache: Optional[bool] = None,
        position_ids: Optional[Tensor] = None,  # [B, T]
        causal: bool = True,
        output_hidden_states: Optional[bool] = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        B, T = input_ids.shape
        if cache is None and use_cache:
            cache = [self.cache_class() for _ in self.layers]
        elif isinstance(cache, (list, tuple)):
            cache = [layer if layer is not None else self.cache_class() for layer in cache]
        past = _cache_length(cache)
        if position_ids is None:
            if past + T > self.config.max_seq_len:
                raise ValueError(f"{past + T} tokens exceed this Hyformer's max_seq_len ({self.config.max_seq_len})")
            position_ids = (past + torch.arange(T, device=input_ids.device)).expand(B, T)
        key_mask = _key_mask(attention_mask, B, past, T, input_ids.device)
        allowed = attention_allowed(key_mask, T, causal)
        rope = self.rotary(position_ids)
        x = self.embed_tokens(input_ids)
        hidden_states = [x] if output_hidden_states else None
        for index, block in enumerate(self.layers):
            x = block(x, rope, allowed, _layer_update(cache, index))
            if output_hidden_states and index < len(self.layers) - 1:
                hidden_states.append(x)
        x = self.norm(x)
        if output_hidden_states:
            hidden_states.append(x)  # as in transformers: the last entry is the normed output
        return BaseModelOutputWithPast(
            last_hidden_state=x,
            cache=cache,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
        )


def _cache_length(cache: Any) -> int:
    if cache is None:
        return 0
    if isinstance(cache, list):
        return cache[0].length if cache else 0
    return cache.get_seq_length()


def _layer_update(cache: Any, index: int):
    if cache is None:
        return None
    if isinstance(cache, list):
        return cache[index].update
    return lambda key, value: cache.update(key, value, index)


def _key_mask(attention_mask: Optional[Tensor], B: int, past: int, T: int, device) -> Tensor:
    """[B, past + T] ones where a key is real; a mask given for the new tokens only covers the past with ones."""
    if attention_mask is None:
        return torch.ones(B, past + T, dtype=torch.long, device=device)
    if attention_mask.shape[1] == T and past:
        attention_mask = torch.cat([attention_mask.new_ones(B, past), attention_mask], dim=1)
    if attention_mask.shape != (B, past + T):
        raise ValueError(f"attention_mask of shape {list(attention_mask.shape)} does not fit {past} cached + {T} new tokens")
    return attention_mask


class Hyformer(HyformerPreTrainedModel, GenerationMixin):
    """The body with its heads: `lm` and `mlm` share the embedding matrix; `prediction` pools and regresses/classifies."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight", "mlm_head.weight": "model.embed_tokens.weight"}
    body_class = HyformerModel  # the class of `self.model` (a subclass may use its own)

    def __init__(self, config: Optional[HyformerConfig] = None, **kwargs):
        """`Hyformer(config)` or, as in the seed, `Hyformer(vocab_size=..., d_model=..., ...)`."""
        if config is None:
            config = self.config_class(**kwargs)
        elif kwargs:
            raise TypeError("pass either a HyformerConfig or its fields as keywords, not both")
        super().__init__(config)
        self.model = self.body_class(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.mlm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.prediction_head = None
        if config.num_prediction_tasks:
            self.prediction_head = PredictionLayer(config.d_model, config.num_prediction_tasks, config.prediction_dropout)
        self.post_init()

    @classmethod
    def from_config(cls, config: HyformerConfig) -> "Hyformer":
        return cls(config)

    def get_num_params(self, trainable_only: bool = False) -> int:
        """Parameters counted once (the tied embedding/heads matrix is one)."""
        return self.num_parameters(only_trainable=trainable_only)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    # -- forward ----------------------------------------------------------------------------

    def forward(
        self,
        input_ids: Tensor,  # [B, T]
        task: str = "lm",
        attention_mask: Optional[Tensor] = None,
        kv_caches: Optional[list] = None,
        use_cache: bool = False,
        labels: Optional[Tensor] = None,
        *,
        targets: Optional[Tensor] = None,  # the seed's name for prediction labels
        cache: Any = None,  # transformers' name; `kv_caches` is the seed's
        position_ids: Optional[Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        **kwargs,
    ) -> ModelOutput:
        """lm: causal, logits [B, T, V], labels are the inputs (shifted here).
        mlm: bidirectional, logits [B, T, V], labels -100 except at masked positions.
        prediction: bidirectional, pooled, logits [B, n]; labels class ids [B] or values [B, n] (NaN: unknown)."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r} (use {', '.join(TASKS)})")
        if task == "prediction" and self.prediction_head is None:
            raise ValueError("this Hyformer has no prediction head (set num_prediction_tasks in its config)")
        labels = labels if labels is not None else targets
        cache = cache if cache is not None else kv_caches
        body = self.model(
            input_ids,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=use_cache or cache is not None,
            position_ids=position_ids,
            causal=task == "lm",
            output_hidden_states=output_hidden_states,
        )
        hidden = body.last_hidden_state  # [B, T, D]
        extras: dict = {"hidden_states": hidden}
        if body.cache is not None:
            extras["kv_caches"] = body.cache
        loss = None
        if task == "prediction":
            T = input_ids.shape[1]
            mask = attention_mask[:, -T:] if attention_mask is not None else torch.ones_like(input_ids)
            logits = self.prediction_head(pool(hidden, mask, self.config.pooling))  # [B, n]
            extras["predictions"] = self._in_data_units(logits)
            if labels is not None:
                loss = compute_prediction_loss(
                    logits, self._standardise(labels), self.config.num_prediction_tasks, task_type=self.config.prediction_task_type
                )
        else:
            logits = (self.lm_head if task == "lm" else self.mlm_head)(hidden)  # [B, T, V]
            if labels is not None:
                loss = compute_lm_loss(logits, labels) if task == "lm" else compute_mlm_loss(logits, labels, self.config.vocab_size)
        return ModelOutput(
            logits=logits, loss=loss, extras=extras, cache=body.cache, hidden_states=body.hidden_states
        )

    def _scale(self, like: Tensor) -> Optional[tuple[Tensor, Tensor]]:
        c = self.config
        if c.prediction_task_type != "regression" or c.prediction_mean is None:
            return None
        mean = torch.tensor(c.prediction_mean, dtype=torch.float32, device=like.device)
        std = torch.tensor(c.prediction_std or [1.0] * len(c.prediction_mean), dtype=torch.float32, device=like.device)
        return mean, std

    def _standardise(self, labels: Tensor) -> Tensor:
        scale = self._scale(labels)
        if scale is None:
            return labels
        mean, std = scale
        return (labels.float().reshape(labels.shape[0], -1) - mean) / std

    def _in_data_units(self, logits: Tensor) -> Tensor:
        kind = self.config.prediction_task_type
        if kind == "classification":
            return logits.float().softmax(dim=-1)
        if kind == "multilabel":
            return logits.float().sigmoid()
        scale = self._scale(logits)
        return logits.float() if scale is None else logits.float() * scale[1] + scale[0]

    @torch.no_grad()
    def predict(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """Predictions in the data's units [B, n] (regression), or probabilities (classification, multi-label)."""
        return self(input_ids, task="prediction", attention_mask=attention_mask).extras["predictions"]
