"""Hyformer: one transformer that is a causal LM (`lm`), a bidirectional encoder (`mlm`) and a
property predictor (`prediction`), switching only the attention mask.

It is a transformers `PreTrainedModel` with `GenerationMixin`, so tjdkit's registry, joint
heads, decoding and chat use it as any other causal LM (task `lm` is the default), while the
seed API (`forward(input_ids, task, ...) -> ModelOutput(logits, loss, extras)`,
`kv_caches`, `from_config`, `get_num_params`, `generate(prefix, ...)`) works as published.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

import torch
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils import ModelOutput as _HFModelOutput

from tjdkit.models.hyformer.config import HyformerConfig
from tjdkit.models.hyformer.layers import HyformerBlock, KVCache, PredictionLayer, RMSNorm, Rotary, attention_allowed, pool
from tjdkit.models.hyformer.losses import compute_lm_loss, compute_mlm_loss, compute_prediction_loss

TASKS = ("lm", "mlm", "prediction")
SEED_GENERATE_ARGS = {"prefix", "max_new_tokens", "temperature", "top_k", "top_p", "eos", "seed", "use_cache"}


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
            cache = [KVCache() for _ in self.layers]
        elif isinstance(cache, (list, tuple)):
            cache = [layer if layer is not None else KVCache() for layer in cache]
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

    def __init__(self, config: Optional[HyformerConfig] = None, **kwargs):
        """`Hyformer(config)` or, as in the seed, `Hyformer(vocab_size=..., d_model=..., ...)`."""
        if config is None:
            config = HyformerConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a HyformerConfig or its fields as keywords, not both")
        super().__init__(config)
        self.model = HyformerModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.mlm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.prediction_head = None
        if config.num_prediction_tasks:
            self.prediction_head = PredictionLayer(config.d_model, config.num_prediction_tasks, config.prediction_dropout)
        self.post_init()

    # -- construction, saving, loading ------------------------------------------------------

    @classmethod
    def from_config(cls, config: HyformerConfig) -> "Hyformer":
        return cls(config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, device=None, config=None, strict: bool = True, **kwargs):
        """A saved directory or hub id. `strict` (the default) refuses weights that do not match the
        model key for key and names the keys; strict=False loads what fits and leaves the rest."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, config=config, output_loading_info=True, **kwargs
        )
        if strict:
            problems = [
                f"{label}: {', '.join(sorted(info[key]))}"
                for key, label in (("unexpected_keys", "unexpected keys"), ("missing_keys", "missing keys"))
                if info.get(key)
            ]
            problems += [f"size mismatch: {entry}" for entry in info.get("mismatched_keys") or []]
            if problems:
                raise ValueError(f"{pretrained_model_name_or_path} does not fit this Hyformer ({'; '.join(problems)})")
        if device is not None:
            model = model.to(device)
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory, safe_serialization: bool = True, **kwargs):
        """model.safetensors + config.json (safetensors always: `safe_serialization` is kept for the seed's callers),
        and modeling_hyformer.py named by the config's auto_map, so plain transformers loads the
        directory with trust_remote_code=True (tjdkit itself never runs that copy)."""
        import shutil
        from pathlib import Path

        from tjdkit.models.hyformer import modeling_hyformer

        kept = getattr(self.config, "auto_map", None)
        self.config.auto_map = dict(modeling_hyformer.AUTO_MAP)
        try:
            result = super().save_pretrained(save_directory, **kwargs)
        finally:
            if kept is None:
                del self.config.auto_map
            else:
                self.config.auto_map = kept
        if kwargs.get("is_main_process", True):
            shutil.copyfile(modeling_hyformer.__file__, Path(save_directory) / "modeling_hyformer.py")
        return result

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

    # -- generation -------------------------------------------------------------------------

    def generate(self, *args, **kwargs) -> Tensor:
        """Two APIs under one name, told apart by their arguments:

        the seed's `generate(prefix, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
        eos=None, seed=None)`: KV-cached sampling (temperature 0: greedy), rows stop at `eos`
        (default: the config's) and are padded after it;

        transformers' `generate(input_ids=..., attention_mask=..., generation_config=..., ...)`
        whenever any other argument is given (chat, self-distillation and bench call it so).
        Both return the prefix followed by the new tokens, [B, T + n].
        """
        if len(args) <= 1 and set(kwargs) <= SEED_GENERATE_ARGS:
            from tjdkit.models.hyformer.generation import sample

            if args:
                kwargs["prefix"] = args[0]
            return sample(self, **kwargs)
        return GenerationMixin.generate(self, *args, **kwargs)

