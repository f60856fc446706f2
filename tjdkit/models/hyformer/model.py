"""Hyformer: one transformer that is a causal LM (`lm`), a bidirectional encoder (`mlm`) and a
property predictor (`prediction`), switching only the attention mask.

It is a transformers `PreTrainedModel` with `GenerationMixin`, so tjdkit's registry, joint
heads, decoding and chat use it as any other causal LM (task `lm` is the default), while the
seed API (`forward(input_ids, task, ...) -> ModelOutput(logits, loss, extras)`,
`kv_caches`, `from_config`, `get_num_params`, `generate(prefix, ...)`) works as published.

The network (body, heads, forward, losses) is defined once, in modeling_hyformer.py, the file
saved directories carry for plain transformers; the classes here subclass it with tjdkit's
config and KVCache and add tjdkit's extras: strict `from_pretrained`, `save_pretrained` writing
the auto_map and the copy, and the seed's `generate(prefix, ...)`.
"""

from __future__ import annotations

from torch import Tensor
from transformers import GenerationMixin

from tjdkit.models.hyformer import modeling_hyformer
from tjdkit.models.hyformer.config import HyformerConfig
from tjdkit.models.hyformer.layers import KVCache
from tjdkit.models.hyformer.modeling_hyformer import TASKS, HyformerPreTrainedModel, ModelInput, ModelOutput

__all__ = ["SEED_GENERATE_ARGS", "TASKS", "Hyformer", "HyformerModel", "HyformerPreTrainedModel", "ModelInput", "ModelOutput"]

SEED_GENERATE_ARGS = {"prefix", "max_new_tokens", "temperature", "top_k", "top_p", "eos", "seed", "use_cache"}


class HyformerModel(modeling_hyformer.HyformerModel):
    """The body: embeddings, blocks, final norm; empty caches are tjdkit's KVCache."""

    config_class = HyformerConfig
    cache_class = KVCache


class Hyformer(modeling_hyformer.Hyformer):
    """The body with its heads: `lm` and `mlm` share the embedding matrix; `prediction` pools and regresses/classifies."""

    config_class = HyformerConfig
    body_class = HyformerModel

    # -- construction, saving, loading ------------------------------------------------------

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

