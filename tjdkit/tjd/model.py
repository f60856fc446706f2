"""A backbone and a joint head in one object, the TJD framework's model API.

    class MyTJD(TJD):                                  # any backbone, no transformers needed
        def get_base_model(self, **model_kwargs):      # -> nn.Module (it becomes self.base_model)
            return MyModel(**model_kwargs)
        def get_last_hidden_state(self, input_ids, attention_mask=None):
            return self.base_model.body(input_ids)     # [B, T, D]: what the output layer sees

    tjd = MyTJD(n_embd=64, vocab_size=512, rank=2, horizon=4, model_head="cp", model_kwargs={...})
    loss = tjd(input_ids).loss                         # the head's mean NLL per token, all windows
    tokens = tjd.generate(ids, max_new_tokens=32, mode="verify")      # lossless: plain greedy's tokens
    tjd.fit(recipe, "runs/mine", tokenizer)           # tjdkit.training.heads.train, head loaded back

    tjd, tokenizer = TransformersTJD.load("tiny-llama", model_head="cp", horizon=4)   # any model tjdkit loads
    tjd = TJD.from_model(model, model_head="cp", horizon=4)

The rest of tjdkit (decoding, training, evaluation, bench) takes a transformers-like causal
LM plus a head. `tjd.language_model` is that LM: for a transformers backbone the model
itself (with its real KV cache); for a custom backbone a `LanguageModel` view that shares
the backbone's parameters and whose cache recomputes the whole sequence on every call
(`RecomputeCache`: exact, O(T) work per step, meant for small models). So

    tjdkit.generate(tjd.language_model, ids, mode="verify", head=tjd.head)
    tjdkit.evaluate(tjd.language_model, tokenizer, tjd.head, modes=("ar", "draft", "verify"))
    tjdkit.run_bench(tjd.language_model, tokenizer, tjd.head, prompts, modes=("ar", "draft", "verify"))

work on either. Decoding is batch size 1.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from torch import Tensor

from tjdkit.errors import TjdkitError
from tjdkit.heads.hub import output_size
from tjdkit.tjd.backbone import LanguageModel


@dataclass
class TJDOutput:
    """What `TJD.forward` returns.

    loss: the joint head's mean negative log-likelihood per token, -log p(x_{t+1..t+H} | h_t) / H
        averaged over every window whose H targets are real tokens (0 when there is none).
    windows: how many windows the mean is over.
    """

    loss: Tensor
    windows: int


class TJD(nn.Module, metaclass=abc.ABCMeta):
    """A backbone (`self.base_model`) and a joint head (`self.head`).

    Subclasses bring the backbone: `get_base_model(**model_kwargs) -> nn.Module` and
    `get_last_hidden_state(input_ids, attention_mask=None) -> [B, T, D]` (the final, normed
    hidden states). The output layer (the backbone's own next-token logits, which verified
    decoding checks drafts against) is `get_output_embeddings()`: by default the base model's
    `get_output_embeddings()` when it has one, else its `lm_head`. The backbone must be
    causal: position t may only depend on tokens 0..t (right padding is then harmless).

    Args (as in the TJD framework):
        n_embd: D, the hidden size get_last_hidden_state returns.
        vocab_size: V, the output layer's vocabulary.
        rank, horizon: the head's rank R and horizon H.
        model_head: "cp", "mps", "multihead", "stp", or "base" (= "stp", see below).
        positivity_func: how the head makes factors non-negative (tjdkit.heads.POSITIVITY).
        freeze_base_model: no gradients for the backbone's parameters.
        model_kwargs: passed to get_base_model.
        **head_options: further build_head options (embedding_dim, draft_vocab, lm_head_weight, init_noise, ...).

    Class attribute `max_position_embeddings` (None: unbounded) caps prompt + new tokens in decoding.
    """

    max_position_embeddings: Optional[int] = None

    def __init__(
        self,
        n_embd: int,
        vocab_size: int,
        rank: int = 2,
        horizon: int = 8,
        model_head: str = "cp",
        positivity_func: str = "exp",
        freeze_base_model: bool = True,
        model_kwargs: Optional[dict] = None,
        **head_options: Any,
    ):
        super().__init__()
        from tjdkit.heads import build_head

        self.n_embd = n_embd
        self.vocab_size = vocab_size
        self.base_model = self.get_base_model(**(model_kwargs or {}))
        if not isinstance(self.base_model, nn.Module):
            raise TjdkitError(f"{type(self).__name__}.get_base_model must return an nn.Module, got {type(self.base_model).__name__}")
        if model_head == "base":
            # The TJD framework's "base" head is the plain single-token head: tjdkit's "stp" (horizon 1).
            model_head, horizon = "stp", 1
        self.head = build_head(
            model_head, hidden_size=n_embd, vocab_size=vocab_size, rank=rank, horizon=horizon,
            positivity=positivity_func, **head_options,
        )
        if freeze_base_model:
            for parameter in self.base_model.parameters():
                parameter.requires_grad_(False)

    # ---- what subclasses provide ----------------------------------------------------------

    @abc.abstractmethod
    def get_base_model(self, **model_kwargs) -> nn.Module:
        """The backbone, built from model_kwargs; it becomes self.base_model."""

    @abc.abstractmethod
    def get_last_hidden_state(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """input_ids [B, T] -> the final, normed hidden states [B, T, D] (what the output layer sees)."""

    def get_output_embeddings(self) -> nn.Module:
        """The output layer: hidden [.., D] -> the backbone's own next-token logits [.., V]."""
        getter = getattr(self.base_model, "get_output_embeddings", None)
        if callable(getter):
            return getter()
        layer = getattr(self.base_model, "lm_head", None)
        if layer is None:
            raise TjdkitError(
                f"{type(self).__name__}: the base model has no get_output_embeddings() or lm_head; "
                "override get_output_embeddings() to return the output layer"
            )
        return layer

    # ---- the rest of tjdkit's view of the backbone --------------------------------------------

    @property
    def language_model(self) -> nn.Module:
        """The backbone as tjdkit's decoding, training, evaluation and bench take it (see the module docstring).

        Not a registered submodule (its parameters are the backbone's own, so the state_dict
        holds them once); built on first use, after the subclass's modules exist."""
        view = self.__dict__.get("_language_model")
        if view is None:
            view = LanguageModel(self)
            object.__setattr__(self, "_language_model", view)
        return view

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def checked_hidden_state(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """get_last_hidden_state, checked: a [B, T, D] tensor (an output with .last_hidden_state is unwrapped)."""
        hidden = self.get_last_hidden_state(input_ids, attention_mask)
        hidden = getattr(hidden, "last_hidden_state", hidden)
        if not isinstance(hidden, Tensor) or hidden.dim() != 3 or tuple(hidden.shape[:2]) != tuple(input_ids.shape):
            shape = list(hidden.shape) if isinstance(hidden, Tensor) else type(hidden).__name__
            raise TjdkitError(
                f"{type(self).__name__}.get_last_hidden_state must return [B, T, D] for input_ids "
                f"{list(input_ids.shape)}, got {shape}"
            )
        return hidden

    # ---- training loss ------------------------------------------------------------------------

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> TJDOutput:
        """The head's mean NLL per token over all windows (see TJDOutput); gradients reach the
        head and whatever part of the backbone is not frozen."""
        from tjdkit.heads.windows import make_windows, window_loss

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.checked_hidden_state(input_ids, attention_mask)  # [B, T, D]
        windows = make_windows(input_ids, attention_mask, self.head.horizon)
        loss = window_loss(self.head, hidden[windows.batch, windows.position], windows.targets)
        return TJDOutput(loss=loss, windows=int(windows.batch.numel()))

    # ---- decoding -------------------------------------------------------------------------------

    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int = 64,
        mode: str = "verify",
        return_stats: bool = False,
        **sampling: Any,
    ):
        """tjdkit.decoding.generate on this backbone and head -> the new token ids (list[int]),
        or (tokens, DecodeStats) with return_stats. mode: "verify" (lossless), "draft", "ar".
        `sampling`: eos_token_ids, temperature, top_k, top_p, repetition_penalty, generator, on_tokens.
        Runs in eval mode (the mode the module was in comes back afterwards)."""
        from tjdkit.decoding import generate

        was_training = self.training
        self.eval()
        try:
            tokens, stats = generate(
                self.language_model, input_ids, mode=mode, head=self.head, max_new_tokens=max_new_tokens, **sampling
            )
        finally:
            self.train(was_training)
        return (tokens, stats) if return_stats else tokens

    # ---- training (`train` is nn.Module's mode switch, hence `fit`) --------------------------

    def fit(self, recipe, run_dir, tokenizer, resume: bool = False, on_event=None, which: str = "best"):
        """Train a head on this backbone with tjdkit.training.heads.train(recipe, run_dir, ...),
        then load the run's `which` checkpoint back: its head replaces self.head and, when the
        backbone trained too (backbone.mode full), its backbone weights are put back, so head and
        backbone match. Which backbone parameters train is the recipe's backbone.mode; the
        requires_grad flags the backbone had before come back afterwards. -> TrainResult.

        `recipe` is a TrainRecipe (e.g. tjdkit.recipes.load_recipe("tiny-stemp", TrainRecipe, [...])).
        Its head section decides the head trained (its name, rank, horizon), not self.head.
        """
        from tjdkit.training.heads import train
        from tjdkit.training.runs import apply_backbone, checkpoint_dir, load_head, read_checkpoint

        if recipe.backbone.mode == "lora":  # peft would wrap the backbone in place; the run could not be put back
            raise TjdkitError("TJD.fit does not train LoRA adapters: use backbone.mode frozen, last_layer or full "
                              "(or tjdkit.training.heads.train and tjdkit.load_run)")
        model = self.language_model
        flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
        try:
            result = train(recipe, Path(run_dir), model=model, tokenizer=tokenizer, resume=resume, on_event=on_event)
            directory = checkpoint_dir(run_dir, which)
            apply_backbone(model, directory, read_checkpoint(directory))
        finally:
            for parameter, flag in flags:
                parameter.requires_grad_(flag)
        self.head = load_head(directory, self.device)
        return result

    # ---- transformers backbones ---------------------------------------------------------------

    @staticmethod
    def from_model(model, **options: Any) -> "TransformersTJD":
        """A TJD on a transformers causal LM (anything tjdkit.models.load_model returns); see TransformersTJD."""
        return TransformersTJD(model, **options)


class TransformersTJD(TJD):
    """A TJD whose backbone is a transformers causal LM: `base_model` is the whole model (output
    layer included), `language_model` is the model itself, so decoding keeps its real KV cache.

    Options as TJD's (rank, horizon, model_head, positivity_func, freeze_base_model, build_head
    options); n_embd and vocab_size come from the model's output layer. The head is put on the
    model's device (float32).
    """

    def __init__(self, model, **options: Any):
        vocab, hidden = output_size(model)
        super().__init__(n_embd=hidden, vocab_size=vocab, model_kwargs={"model": model}, **options)
        self.head.to(model.device)

    @classmethod
    def load(cls, name: str, *, dtype: Any = "auto", device: Any = "auto", seed: int = 0, **options: Any):
        """tjdkit.models.load_model(name) with a fresh head -> (tjd, tokenizer)."""
        from tjdkit.models import load_model

        model, tokenizer = load_model(name, dtype=dtype, device=device, seed=seed)
        return cls(model, **options), tokenizer

    def get_base_model(self, model) -> nn.Module:
        return model

    def get_last_hidden_state(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        return self.base_model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @property
    def language_model(self) -> nn.Module:
        return self.base_model
