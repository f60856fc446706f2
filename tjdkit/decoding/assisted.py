"""Joint heads inside transformers' own `model.generate`: the head drafts for transformers'
assisted generation, so generate's own features (logits processors, stopping criteria,
streamers, return_dict_in_generate) keep working and its own loop verifies the drafts.

    attached = attach_head(model, head)
    out = model.generate(input_ids, max_new_tokens=64)                  # greedy: identical to plain generate
    out = model.generate(input_ids, do_sample=True, max_new_tokens=64)  # follows the model's distribution
    attached.stats.tau        # tokens per verify forward in the last call; attached.total sums every call
    detach_head(model)        # generate is transformers' again; nothing of tjdkit is left on the model

How it plugs in: `attach_head` binds an instance-level `generate` (as transformers itself binds a
Hub `custom_generate` in from_pretrained) that calls transformers' generate with a `custom_generate`
callable; that callable runs transformers' own `_assisted_decoding` with `_get_candidate_generator`
answering the head's generator (tjdkit.decoding.head_candidates) for that one call. Chosen because a
plain `generate(...)` never reaches `_get_candidate_generator` (assisted mode needs an assistant
model or prompt lookup), and a permanent override would hijack a user's own assistant or lookup.

Where assisted decoding cannot run, generate runs as it would without the head: beam search, a
batch of several rows, use_cache=False, or the user's own assistant_model / prompt lookup / custom_generate.

Sampling: the drafts are sampled from the head's conditionals q and handed over with log q as
candidate logits, so transformers applies speculative sampling (accept with min(1, p/q), resample
from the residual), p being the model's processed distribution (temperature, top-k, top-p). Without
candidate logits transformers would sample from p and keep drafts that match the samples: also exact,
but a draft then survives with probability p(d) rather than min(1, p(d)/q(d)), so fewer are accepted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tjdkit.decoding.stats import DecodeStats
from tjdkit.errors import TjdkitError

ATTRIBUTE = "tjdkit_assisted"  # the AttachedHead on an attached model
# generate() arguments with which the user asks for transformers' own drafting: the head steps aside
_OWN_DRAFTING = ("assistant_model", "custom_generate", "prompt_lookup_num_tokens", "assistant_early_exit", "use_mtp")


@dataclass
class AttachedHead:
    """What `attach_head` returns (also `model.tjdkit_assisted` while attached)."""

    head: Any
    stats: DecodeStats = field(default_factory=lambda: DecodeStats("verify"))  # the last generate call with the head
    total: DecodeStats = field(default_factory=lambda: DecodeStats("verify"))  # every such call since attach_head


def attach_head(model, head) -> AttachedHead:
    """Make `model.generate` draft with `head` (transformers' assisted generation) -> the attachment,
    whose `stats` count the last call's forwards, tokens and accepted drafts (`stats.tau`).
    Attaching again replaces the head (and starts new counts)."""
    from transformers import GenerationMixin

    if not isinstance(model, GenerationMixin) or not hasattr(model, "base_model"):
        raise TjdkitError(f"attach_head: {type(model).__name__} is not a transformers model with generate()")
    if getattr(model, ATTRIBUTE, None) is not None:
        detach_head(model)
    if "generate" in vars(model) or type(model).generate is not GenerationMixin.generate:
        raise TjdkitError(f"attach_head: {type(model).__name__} already has its own generate (a decorator or a "
                          "Hub custom_generate); attach the head to a plain transformers model")
    if getattr(model, "_is_stateful", False):
        raise TjdkitError(f"attach_head: {type(model).__name__} keeps a recurrent state that cannot roll back "
                          "rejected drafts")
    if not (hasattr(head, "draft") and hasattr(head, "horizon") and hasattr(head, "in_vocab")):
        raise TjdkitError(f"attach_head: {type(head).__name__} is not a joint head (build one with tjdkit.build_head)")
    config = model.config.get_text_config()
    for what in ("hidden_size", "vocab_size"):
        ours, theirs = getattr(head, what, None), getattr(config, what, None)
        if ours is not None and theirs is not None and ours != theirs:
            raise TjdkitError(f"attach_head: the head's {what} is {ours}, the model's {theirs}")

    attached = AttachedHead(head)
    original = model.generate  # transformers' generate, bound to this model

    def generate(*args, **kwargs):
        if any(kwargs.get(name) not in (None, False) for name in _OWN_DRAFTING):
            return original(*args, **kwargs)
        call = _Call(attached, kwargs.get("streamer"), bool(kwargs.get("synced_gpus")))
        start = time.perf_counter()
        result = original(*args, custom_generate=call.decode, **kwargs)
        if call.stats is not None:
            call.stats.seconds = time.perf_counter() - start
            attached.stats = call.stats
            attached.total.merge(call.stats)
        return result

    generate.__doc__ = ("transformers' generate, drafting with a tjdkit joint head (detach_head restores it).\n\n"
                        + (original.__doc__ or ""))
    model.generate = generate
    setattr(model, ATTRIBUTE, attached)
    return attached


def detach_head(model) -> None:
    """Undo `attach_head`: `model.generate` is transformers' own again, and no tjdkit attribute stays."""
    if getattr(model, "__dict__", {}).get(ATTRIBUTE) is None:
        raise TjdkitError("detach_head: no head is attached to this model (attach one with attach_head)")
    del model.generate
    delattr(model, ATTRIBUTE)


class _Call:
    """One generate call: the custom_generate callable transformers runs after preparing its inputs."""

    def __init__(self, attached: AttachedHead, streamer, synced_gpus: bool):
        self.attached, self.streamer, self.synced_gpus = attached, streamer, synced_gpus
        self.stats = None  # DecodeStats once the head drafted

    def decode(self, model, input_ids, logits_processor, stopping_criteria, generation_config, inputs_tensor=None,
               **model_kwargs):
        """transformers' `_assisted_decoding` with the head's candidate generator, or, where assisted decoding
        cannot run, the method transformers would have chosen. (transformers passes a callable
        custom_generate neither the streamer nor synced_gpus: they come from the call's own arguments.)"""
        from transformers.generation.utils import GENERATION_MODES_MAPPING, GenerationMode

        mode = generation_config.get_generation_mode()
        common = {"logits_processor": logits_processor, "stopping_criteria": stopping_criteria,
                  "generation_config": generation_config, "synced_gpus": self.synced_gpus}
        if mode in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE) and input_ids.shape[0] == 1 \
                and model_kwargs.get("cache") is not None:
            return self._with_head(model, input_ids, common, inputs_tensor, model_kwargs)
        method = GENERATION_MODES_MAPPING[mode]
        if "/" in method:  # a mode transformers moved to a Hub repo
            raise TjdkitError(f"generate with a tjdkit head attached cannot run {mode.value} (detach_head first)")
        if mode == GenerationMode.ASSISTED_GENERATION:  # the user's own prompt lookup / early exit
            common["inputs_tensor"] = inputs_tensor
        if mode != GenerationMode.BEAM_SEARCH and mode != GenerationMode.BEAM_SAMPLE:
            common["streamer"] = self.streamer
        return getattr(type(model), method)(model, input_ids, **common, **model_kwargs)

    def _with_head(self, model, input_ids, common, inputs_tensor, model_kwargs):
        from tjdkit.decoding.head_candidates import HeadCandidateGenerator

        self.stats = DecodeStats("verify")
        generator = HeadCandidateGenerator(self.attached.head, common["generation_config"], self.stats)
        hook = model.base_model.register_forward_hook(generator.capture)
        model._get_candidate_generator = lambda *args, **kwargs: generator  # this call only: removed below
        try:
            return type(model)._assisted_decoding(model, input_ids, streamer=self.streamer,
                                                    inputs_tensor=inputs_tensor, **common, **model_kwargs)
        finally:
            del model._get_candidate_generator
            hook.remove()
