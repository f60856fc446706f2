"""KV-cached decoding: the base model alone (`ar`), a joint head alone (`draft`), or both (`verify`).

    tokens, stats = generate(model, input_ids, mode="ar", max_new_tokens=64)
    tokens, stats = generate(model, input_ids, mode="verify", head=head, eos_token_ids=[eos])
    stats = acceptance(model, head, input_ids, continuation)   # teacher-forced, no generation

`draft` is TJDNet's joint decoding: the head's joint distribution replaces the model's
chain rule for H tokens at a time; lossy by design, about one model forward per H tokens.

`verify` is lossless speculative decoding (tjdkit.decoding.verify), its drafts from the head,
from prompt lookup, or both (`drafter`).

Accounting, the same in every mode: `forwards` counts every model forward, the prefill
included, and nothing runs after the last token is chosen. So `ar` makes exactly one
token per forward, `draft` up to H, and `verify` 1 + accepted drafts per verify forward
(`tau`). Batch size 1 throughout.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Optional, Sequence, Union

import torch
from torch import Tensor

from tjdkit.decoding.context import check_prompt, fit_to_context
from tjdkit.decoding.drafters import DRAFTERS
from tjdkit.decoding.forward import greedy_tokens, new_cache, next_hidden, next_logits
from tjdkit.decoding.sampling import Sampling, penalty_context
from tjdkit.decoding.stats import DecodeStats
from tjdkit.decoding.verify import verify
from tjdkit.errors import TjdkitError

MODES = ("ar", "draft", "verify")
HEAD_MODES = ("draft", "verify")


def parse_modes(modes: Union[str, Iterable[str]], known: Sequence[str] = MODES, what: str = "mode") -> tuple[str, ...]:
    """"ar,verify" (or a sequence of names) -> the modes in the order given; an unknown, repeated
    or missing mode is refused. eval, bench and bench's core all read --modes through here."""
    text = modes if isinstance(modes, str) else ",".join(modes)
    chosen = tuple(mode.strip() for mode in text.split(",") if mode.strip())
    unknown = [mode for mode in chosen if mode not in known]
    if unknown or not chosen:
        raise TjdkitError(f"unknown {what} '{','.join(unknown) or text}' (use {', '.join(known)})")
    if len(set(chosen)) != len(chosen):
        raise TjdkitError(f"--modes lists a mode twice: {text}")
    return chosen


def _cut(chunk: list[int], room: int, eos: set[int]) -> tuple[list[int], bool]:
    """Keep at most `room` tokens and stop after the first EOS (kept) -> (tokens, hit EOS)."""
    chunk = chunk[:room]
    for i, token in enumerate(chunk):
        if token in eos:
            return chunk[: i + 1], True
    return chunk, False


@torch.no_grad()
def generate(
    model,
    input_ids: Tensor,  # [1, T]
    *,
    mode: str = "ar",
    head=None,
    max_new_tokens: int = 64,
    eos_token_ids: Optional[Iterable[int]] = (),
    temperature: float = 0.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    repetition_penalty: float = 1.0,
    generator: Optional[torch.Generator] = None,
    on_tokens: Optional[Callable[[list[int]], None]] = None,
    drafter: str = "hybrid",
) -> tuple[list[int], DecodeStats]:
    """Generate up to `max_new_tokens` after the prompt -> (new token ids, stats).

    Stops after the first token in `eos_token_ids` (which is kept in the output).
    Greedy when temperature == 0, else sampled from `generator`; top_k, top_p and
    repetition_penalty act as in transformers (ar and verify only). `on_tokens` receives
    the tokens of each step as soon as they are chosen (for streaming).
    mode "ar": one token per forward from the model's own distribution.
    mode "draft": `head.draft` proposes H tokens from the hidden state at the end of the
    sequence; all are kept (cut at EOS or max_new_tokens) and fed through the model in ONE
    forward for the next hidden state. Lossy: the tokens follow the head's joint, not the model.
    mode "verify": lossless speculative decoding (tjdkit.decoding.verify) with drafts from
    `drafter`: "hybrid" (prompt lookup where the context repeats, else the head), "head", or
    "lookup" (no head needed).
    """
    if mode not in MODES:
        raise TjdkitError(f"unknown decoding mode {mode!r} (choose from {', '.join(MODES)})")
    if drafter not in DRAFTERS:
        raise TjdkitError(f"unknown drafter {drafter!r} (choose from {', '.join(DRAFTERS)})")
    if mode in HEAD_MODES and head is None and not (mode == "verify" and drafter == "lookup"):
        raise TjdkitError(f"{mode} decoding needs a head" + (" (or drafter='lookup')" if mode == "verify" else ""))
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise TjdkitError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise TjdkitError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise TjdkitError(f"top_p must be in (0, 1], got {top_p!r}")
    if not repetition_penalty > 0:
        raise TjdkitError(f"repetition_penalty must be > 0, got {repetition_penalty!r}")
    if mode == "draft":
        if top_k and temperature > 0:
            raise TjdkitError("top_k is not supported in draft mode (the head samples from its full conditionals)")
        if (top_p is not None and top_p < 1 and temperature > 0) or repetition_penalty != 1.0:
            raise TjdkitError("top_p and repetition_penalty are not supported in draft mode (use verify)")
    check_prompt(input_ids)
    # verify feeds H tokens past the last accepted one: keep those positions inside the context too
    reach = head.horizon - 1 if mode == "verify" and head is not None else 0
    max_new_tokens = max(0, fit_to_context(model, input_ids.shape[1] + reach, max_new_tokens + reach) - reach)

    sampling = Sampling(temperature, top_k, top_p, repetition_penalty)
    eos = set(int(t) for t in (eos_token_ids or ()))
    stats = DecodeStats(mode=mode)
    start = time.perf_counter()
    ids = input_ids.to(next(model.parameters()).device)
    emit = on_tokens or (lambda _tokens: None)
    if max_new_tokens == 0:
        out: list[int] = []
    elif mode == "verify":
        out = verify(model, head, ids, max_new_tokens, eos, sampling, generator, stats, emit, drafter)
    else:
        out = _one_model_forward_per_step(model, head, ids, mode, max_new_tokens, eos, sampling, generator, stats, emit)
    stats.new_tokens = len(out)
    stats.seconds = time.perf_counter() - start
    return out, stats


def _one_model_forward_per_step(model, head, ids, mode, max_new_tokens, eos, sampling, generator, stats, emit):
    """ar and draft: each forward appends the last step's tokens and chooses the next 1 (ar) or H (draft)."""
    cache = new_cache(model)
    out: list[int] = []
    feed = ids
    while True:
        if mode == "ar" and sampling.argmax_only:  # only the argmax is read: the screen where it pays
            chunk = greedy_tokens(model, next_hidden(model, feed, cache))
        elif mode == "ar":
            logits = next_logits(model, feed, cache)  # [V]
            chunk = [sampling.pick(sampling.penalise(logits, penalty_context(ids, out)), generator)]
        else:
            hidden = next_hidden(model, feed, cache)  # [1, D]
            greedy = sampling.greedy
            tokens, _ = head.draft(hidden, greedy=greedy, temperature=sampling.temperature or 1.0, generator=generator)
            chunk = tokens[0].tolist()  # H tokens
        stats.forwards += 1
        chunk, hit_eos = _cut(chunk, max_new_tokens - len(out), eos)
        out += chunk
        emit(chunk)
        if mode == "draft":
            stats.accepted.append(len(chunk))
        if hit_eos or len(out) >= max_new_tokens:
            return out
        feed = torch.tensor([chunk], dtype=ids.dtype, device=ids.device)  # [1, len(chunk)]


