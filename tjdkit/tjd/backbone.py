"""A custom backbone seen as the transformers-like causal LM the rest of tjdkit takes
(`TJD.language_model`): outputs with `.last_hidden_state` / `.logits`, a config, and a cache
that recomputes the sequence for backbones that keep none."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from tjdkit.errors import TjdkitError


@dataclass
class HiddenOutput:
    """The backbone's output as the decoding core reads it (`.last_hidden_state`)."""

    last_hidden_state: Tensor  # [B, T, D]


@dataclass
class CausalLMOutput:
    """A causal LM's output as training and evaluation read it."""

    logits: Tensor  # [B, T, V]
    hidden_states: tuple  # (last_hidden_state,): only [-1], the final normed states, is provided
    loss: Optional[Tensor] = None  # next-token cross-entropy when labels are given (-100 ignored)


class RecomputeCache:
    """The "KV cache" of a backbone without one: the ids fed so far.

    Each call appends the new ids and runs the backbone over all of them, returning the rows
    of the new ids: exact (the same numbers a full forward gives), at the cost of a full
    forward per step. The methods verified decoding calls behave as DynamicCache's do.
    """

    def __init__(self):
        self.ids: Optional[Tensor] = None  # [B, T]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.ids is None else int(self.ids.shape[1])

    def activate_past_recording(self) -> None:
        """Nothing to record: every token is kept."""

    def crop(self, tokens_to_remove: int) -> None:
        """crop(-k) drops the last k ids; crop(0) changes nothing (positive values are refused, as DynamicCache does)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes -k to drop the last k tokens, got {tokens_to_remove}")
        if tokens_to_remove < 0 and self.ids is not None:
            self.ids = self.ids[:, : max(self.ids.shape[1] + tokens_to_remove, 0)]

    def extend(self, input_ids: Tensor, run) -> Tensor:
        """Append input_ids [B, n]; `run(all ids [B, T])` -> hidden [B, T, D]; -> the new rows [B, n, D]."""
        self.ids = input_ids if self.ids is None or self.ids.shape[1] == 0 else torch.cat([self.ids, input_ids], dim=1)
        return run(self.ids)[:, -input_ids.shape[1] :]


class _Config:
    """What the core reads from a model's config."""

    def __init__(self, vocab_size: int, max_position_embeddings: Optional[int]):
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.final_logit_softcapping = None

    def get_text_config(self, *args, **kwargs) -> "_Config":
        return self


class _Backbone(nn.Module):
    """`language_model.base_model`: input_ids -> .last_hidden_state, with or without a RecomputeCache.

    Holds the TJD's modules other than the head (so a subclass's extra modules count too)."""

    def __init__(self, tjd: nn.Module):
        super().__init__()
        for name, module in tjd.named_children():
            if module is not tjd.head:
                self.add_module(name, module)
        object.__setattr__(self, "_tjd", tjd)  # not a submodule: the TJD holds the head

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None, cache=None, use_cache: bool = False,
                **_ignored) -> HiddenOutput:
        if cache is None:
            return HiddenOutput(self._tjd.checked_hidden_state(input_ids, attention_mask))
        if not isinstance(cache, RecomputeCache):
            raise TjdkitError(f"a custom backbone decodes with its RecomputeCache (model.new_cache()), got {type(cache).__name__}")
        return HiddenOutput(cache.extend(input_ids, lambda ids: self._tjd.checked_hidden_state(ids, None)))


class LanguageModel(nn.Module):
    """A TJD's custom backbone with the interface of a transformers causal LM, sharing its parameters:
    `base_model(input_ids=, attention_mask=, cache=, use_cache=)` -> .last_hidden_state,
    `get_output_embeddings()`, `config` (vocab_size, max_position_embeddings, get_text_config()),
    `device`, `new_cache()` (a RecomputeCache), and `forward(input_ids, attention_mask, labels,
    output_hidden_states)` -> CausalLMOutput (.logits, .hidden_states[-1], .loss)."""

    def __init__(self, tjd: nn.Module):
        super().__init__()
        self.base_model = _Backbone(tjd)
        layer = tjd.get_output_embeddings()
        inside = {id(p) for p in self.base_model.parameters()}
        if isinstance(layer, nn.Module) and not all(id(p) in inside for p in layer.parameters()):
            self.lm_head = layer  # an output layer outside the TJD's modules: register it so its parameters count
        object.__setattr__(self, "_tjd", tjd)
        self.config = _Config(tjd.vocab_size, tjd.max_position_embeddings)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def get_output_embeddings(self) -> nn.Module:
        return self._tjd.get_output_embeddings()

    def new_cache(self) -> RecomputeCache:
        return RecomputeCache()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,
        output_hidden_states: bool = False,
        **_ignored,
    ) -> CausalLMOutput:
        hidden = self._tjd.checked_hidden_state(input_ids, attention_mask)  # [B, T, D]
        logits = self.get_output_embeddings()(hidden)  # [B, T, V]
        loss = None
        if labels is not None:  # token t predicts label t+1, as transformers' causal LMs do
            shifted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
            loss = F.cross_entropy(shifted, labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(logits=logits, hidden_states=(hidden,), loss=loss)


__all__ = ["CausalLMOutput", "HiddenOutput", "LanguageModel", "RecomputeCache"]
