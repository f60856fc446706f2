"""Decoding with a model and, optionally, a joint head: the primitives (one KV-cached forward,
the output layer, sampling rules, context limits), `ar` / `draft` / lossless `verify`, and
the acceptance statistics bench, eval and chat report, and `attach_head` (a joint head
drafting inside transformers' own `model.generate`).

    tokens, stats = generate(model, input_ids, mode="verify", head=head, max_new_tokens=64)
"""

from tjdkit.decoding.acceptance import acceptance
from tjdkit.decoding.assisted import AttachedHead, attach_head, detach_head
from tjdkit.decoding.context import check_prompt, context_length, fit_to_context
from tjdkit.decoding.forward import apply_soft_cap, new_cache, output_logits, raw_logits, soft_cap, soft_cap_value
from tjdkit.decoding.generate import HEAD_MODES, MODES, generate, parse_modes
from tjdkit.decoding.sampling import Sampling
from tjdkit.decoding.stats import DecodeStats, acceptance_rates

__all__ = [
    "HEAD_MODES", "MODES", "AttachedHead", "DecodeStats", "Sampling", "acceptance", "acceptance_rates", "apply_soft_cap",
    "attach_head", "check_prompt", "context_length", "detach_head", "fit_to_context", "generate", "new_cache",
    "output_logits", "parse_modes", "raw_logits", "soft_cap", "soft_cap_value",
]
