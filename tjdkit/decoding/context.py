"""What a prompt may be: one sequence, inside the positions the model can read."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from tjdkit.errors import TjdkitError


def check_prompt(input_ids: Tensor) -> None:
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 1:
        shape = list(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise TjdkitError(f"decoding takes input_ids of shape [1, T] with T >= 1, got {shape}")


def context_length(model) -> Optional[int]:
    """Positions the model can read (max_position_embeddings; GPT-2's n_positions and Hyformer's
    max_seq_len answer to that name too), or None when the config does not say."""
    length = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return length if isinstance(length, int) and length > 0 else None


def fit_to_context(model, prompt_tokens: int, max_new_tokens: int) -> int:
    """`max_new_tokens` cut to the room the context leaves after the prompt; a prompt that fills the
    context is refused (learned positions would index past their table, RoPE models read garbage)."""
    limit = context_length(model)
    if limit is None:
        return max_new_tokens
    if prompt_tokens >= limit:
        raise TjdkitError(
            f"the prompt is {prompt_tokens} tokens and this model reads at most {limit}: shorten it"
            + (" (it leaves no room for a reply)" if prompt_tokens == limit else "")
        )
    return min(max_new_tokens, limit - prompt_tokens)

