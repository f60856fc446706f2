"""`enable_tnot(model_class)`: the seeds' decorator, for any causal LM class of transformers.

    TnotModel = enable_tnot(AutoModelForCausalLM)               # or LlamaForCausalLM, ...
    model = TnotModel.from_pretrained(path, tnot_config=TnotConfig(steps=3))
    out = model.generate(input_ids, max_new_tokens=64)          # TNOT inside, same output layout
    model.tnot_results[0].records                               # entropy trace of the last call

Without `tnot_config`, the model behaves as the published SRGen decorator does: mode "srgen"
(tjdkit.tnot.srgen), configured by the seeds' environment variables over SRGen's defaults,
read again at every `generate` call, since SRGen's evaluator changes them between calls. An
explicit `tnot_config` stays as given. A model class gets a subclass with the same name that
overrides `generate`; an Auto class gets a loader whose models are switched to that
subclass. `generate(..., tnot=False)` is the plain transformers generate.
"""

from __future__ import annotations

from typing import Optional

from tjdkit.tnot.config import TnotConfig
from tjdkit.tnot.env import config_from_env

_CLASSES: dict[type, type] = {}


class TnotMixin:
    """What `enable_tnot` adds to a causal LM: a TNOT `generate` and the seeds' attributes."""

    tnot_default: Optional[TnotConfig] = None  # enable_tnot(cls, config)
    tnot_config: Optional[TnotConfig] = None
    tnot_env_config: Optional[TnotConfig] = None  # the config last read from the environment, while it is in use
    tnot_results: list = []
    tnot_results_mode: str = "tjdkit"  # the mode that made tnot_results

    @classmethod
    def from_pretrained(cls, *args, tnot_config: Optional[TnotConfig] = None, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        return _configure(model, tnot_config or cls.tnot_default)

    def tnot_current_config(self) -> TnotConfig:
        """The config of the next call: the environment read now, unless a config was given
        (at load time, or by assigning `tnot_config`)."""
        if self.tnot_config is None or self.tnot_config is self.tnot_env_config:
            self.tnot_config = self.tnot_env_config = config_from_env(srgen=True)
        return self.tnot_config

    def generate(self, inputs=None, generation_config=None, *, tnot=None, **kwargs):
        """transformers' generate, with TNOT unless `tnot=False`; `tnot` may be a TnotConfig.

        Returns the sequences [B, T + n] (shorter rows padded with pad_token_id) as
        transformers does; the per-token traces are in `self.tnot_results`.
        """
        if tnot is False:
            return super().generate(inputs, generation_config=generation_config, **kwargs)
        import copy

        import torch

        from tjdkit.decoding import Sampling
        from tjdkit.tnot.generate import tnot_generate

        config = tnot.check() if isinstance(tnot, TnotConfig) else self.tnot_current_config()
        input_ids = kwargs.pop("input_ids", inputs)
        attention_mask = kwargs.pop("attention_mask", None)
        streamer = kwargs.pop("streamer", None)
        generator = kwargs.pop("generator", None)
        gen = copy.deepcopy(generation_config or self.generation_config)
        unused = gen.update(**kwargs)
        unused = {key: value for key, value in unused.items() if value is not None and key != "use_cache"}
        if unused:
            raise TypeError(f"generate() with TNOT does not take {', '.join(sorted(unused))}")
        if gen.max_new_tokens is not None:
            max_new = gen.max_new_tokens
        else:
            max_new = max((gen.max_length or 20) - input_ids.shape[1], 0)
        sample = bool(gen.do_sample)
        sampling = Sampling(
            temperature=float(gen.temperature or 1.0) if sample else 0.0,
            top_k=gen.top_k if sample else None,
            top_p=gen.top_p if sample else None,
            repetition_penalty=float(gen.repetition_penalty or 1.0),
        )
        eos = gen.eos_token_id
        eos = None if eos is None else (list(eos) if isinstance(eos, (list, tuple)) else [eos])
        on_token = None
        if streamer is not None:
            streamer.put(input_ids.cpu())
            on_token = lambda _row, record: streamer.put(torch.tensor([record.token]))  # noqa: E731
        results = tnot_generate(
            self, input_ids, attention_mask, config=config, max_new_tokens=max_new, eos_token_ids=eos,
            sampling=sampling, generator=generator, on_token=on_token,
        )
        if streamer is not None:
            streamer.end()
        self.tnot_results, self.tnot_results_mode = results, config.mode
        if config.record_path:
            _append_records(config.record_path, results)
        pad = gen.pad_token_id if gen.pad_token_id is not None else (eos[0] if eos else 0)
        width = max(len(result.tokens) for result in results)
        new = torch.full((len(results), width), pad, dtype=input_ids.dtype, device=input_ids.device)
        for row, result in enumerate(results):
            new[row, : len(result.tokens)] = torch.tensor(result.tokens, dtype=input_ids.dtype)
        return torch.cat([input_ids, new], dim=1)

    # -- the seeds' attributes, read from the last call --------------------------------------
    @property
    def delta(self):
        """[B, 1, D] prompt deltas of the last call (None before one, or without a prompt stage)."""
        deltas = [result.delta for result in self.tnot_results]
        if not deltas or any(d is None for d in deltas):
            return None
        import torch

        return torch.stack(deltas)[:, None, :]

    @property
    def entropy_history(self):
        """Entropies of the last response (a list per row for a batch)."""
        histories = [result.entropies for result in self.tnot_results]
        return histories[0] if len(histories) == 1 else histories

    @property
    def high_entropy_detected(self) -> bool:
        """A trigger in the last call. In srgen mode, as SRGen's flag reads after its evaluator's loop:
        only a response ended by a forced EOS (so that loop, run over this model, stops after one call)."""
        return self.high_entropy_position is not None

    @property
    def high_entropy_position(self):
        """Response position of the first trigger of the first row that had one (None if none)."""
        srgen = self.tnot_results_mode == "srgen"
        for result in self.tnot_results:
            for record in result.records:
                if record.forced_eos or (record.reflected and not srgen):
                    return record.position
        return None

    @property
    def entropy_threshold(self) -> float:
        return (self.tnot_config or TnotConfig()).entropy_threshold

    @property
    def index(self) -> int:
        """Tokens generated in the last call (of its first row)."""
        return len(self.tnot_results[0].tokens) if self.tnot_results else 0

    def reset_entropy_detection(self) -> None:
        self.tnot_results = []

    def reset_model_parameters(self) -> None:
        """Forget the last call entirely (each call already starts from a fresh state)."""
        self.tnot_results = []

    def _safe_decode_token(self, token_id: int, tokenizer=None) -> str:
        return self._safe_decode_sequence([token_id], tokenizer)

    def _safe_decode_sequence(self, token_ids, tokenizer=None) -> str:
        try:
            return tokenizer.decode(list(token_ids)) if tokenizer is not None else " ".join(map(str, token_ids))
        except Exception:  # noqa: BLE001 - ids outside the tokenizer: show them as numbers
            return " ".join(map(str, token_ids))


def _append_records(path: str, results) -> None:
    """The seeds' record_entropy: one JSON line per token, appended across calls (prompt = row in the batch)."""
    from tjdkit.tnot.records import record_lines

    with open(path, "a", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in record_lines(results))


def tnot_class(model_class: type, default: Optional[TnotConfig] = None) -> type:
    """`model_class` with TNOT's generate: a subclass of the same name (so saved configs still load)."""
    if issubclass(model_class, TnotMixin) and default is None:
        return model_class
    if default is not None:
        return type(model_class.__name__, (TnotMixin, model_class), {"__module__": model_class.__module__, "tnot_default": default})
    if model_class not in _CLASSES:
        _CLASSES[model_class] = type(model_class.__name__, (TnotMixin, model_class), {"__module__": model_class.__module__})
    return _CLASSES[model_class]


def attach_tnot(model, config: Optional[TnotConfig] = None):
    """Give a loaded model TNOT in place (its class becomes the TNOT subclass) and return it.

    Without `config`: SRGen's mode from the environment, read again at every generate call.
    """
    model.__class__ = tnot_class(type(model))
    return _configure(model, config)


def _configure(model, config: Optional[TnotConfig]):
    model.tnot_config = model.tnot_env_config = None
    if config is not None:
        model.tnot_config = config.check()
    else:
        model.tnot_current_config()  # read now, so a bad variable fails at load time
    model.tnot_results = []
    return model


def enable_tnot(model_class: type, config: Optional[TnotConfig] = None) -> type:
    """A class whose `from_pretrained` models generate with TNOT.

    Works for transformers' Auto classes (the concrete class is chosen at load time) and
    for any concrete causal LM class. `tnot_config=` at load time wins over `config`, and
    either wins over the environment variables.
    """
    from transformers import PreTrainedModel

    if issubclass(model_class, PreTrainedModel):
        return tnot_class(model_class, config)

    class _AutoLoader:
        """Loads through the Auto class, then gives the model TNOT."""

        @classmethod
        def from_pretrained(cls, *args, tnot_config: Optional[TnotConfig] = None, **kwargs):
            return attach_tnot(model_class.from_pretrained(*args, **kwargs), tnot_config or config)

        @classmethod
        def from_config(cls, model_config, *args, tnot_config: Optional[TnotConfig] = None, **kwargs):
            return attach_tnot(model_class.from_config(model_config, *args, **kwargs), tnot_config or config)

    _AutoLoader.__name__ = _AutoLoader.__qualname__ = f"Tnot{model_class.__name__}"
    return _AutoLoader
