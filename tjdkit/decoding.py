"""Decoding with a base model alone (`ar`) or with a joint head drafting H tokens per step (`draft`).

    tokens, stats = generate(model, input_ids, mode="ar", max_new_tokens=64)
    tokens, stats = generate(model, input_ids, mode="draft", head=head, eos_token_ids=[eos])
    stats = acceptance(model, head, input_ids, continuation)   # teacher-forced, no generation

`draft` is TJDNet's joint decoding: the head's joint distribution replaces the model's
chain rule for H tokens at a time, so it is lossy by design but costs about one model
forward per H tokens. `acceptance` measures how much of a reference continuation (e.g. the
model's own greedy output) the head's greedy drafts would get accepted by a greedy
speculative verifier: the number that bounds what verified decoding can gain.

Accounting, the same in every mode: one "step" picks one token (`ar`) or one chunk of up
to H tokens (`draft`), and every step costs exactly one model forward, the one that feeds
the step's tokens back through the model. The last step's tokens are fed too (so the
cache always ends holding prompt + output), hence `forwards == 1 + steps` (the 1 is the
prefill) and `tokens_per_forward == new_tokens / steps`. Batch size 1 throughout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch
from torch import Tensor

from tjdkit.errors import TjdkitError

MODES = ("ar", "draft")


@dataclass
class DecodeStats:
    mode: str  # "ar", "draft" or "acceptance"
    new_tokens: int = 0
    forwards: int = 0  # model forward calls, prefill included (acceptance: those a verified decoder would run)
    seconds: float = 0.0
    # draft: tokens emitted per head call; acceptance: draft tokens accepted per verify step
    accepted: list[int] = field(default_factory=list)

    @property
    def decode_forwards(self) -> int:
        """Forwards after the prefill: one per step."""
        return max(self.forwards - 1, 0)

    @property
    def tokens_per_forward(self) -> float:
        """new_tokens / decode forwards: 1.0 for `ar`, about H for `draft`, mean(accepted + 1) for acceptance."""
        return self.new_tokens / self.decode_forwards if self.decode_forwards else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


# ---- one forward ---------------------------------------------------------------------------


def _new_cache(model):
    """An empty DynamicCache shaped by the config, so sliding-window layers (Gemma 3) keep only their window."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _next_logits(model, ids: Tensor, cache) -> Tensor:
    """ids [1, n] appended to the cache -> next-token logits [V] (float32) at the last position."""
    out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out.logits[0, -1].float()


def _next_hidden(model, ids: Tensor, cache) -> Tensor:
    """ids [1, n] appended to the cache -> final normed hidden state [1, D] at the last position.

    Runs the backbone only (no lm_head): the head needs what lm_head would see, which is
    also what `tjdkit.windows.last_hidden` gives the head during training.
    """
    out = model.base_model(input_ids=ids, past_key_values=cache, use_cache=True)
    return out.last_hidden_state[:, -1]


def _pick(logits: Tensor, temperature: float, top_k: Optional[int], generator) -> int:
    """logits [V] -> one token id: argmax when temperature == 0, else a tempered, top-k-filtered sample."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k:  # None or 0: no filter
        k = min(int(top_k), logits.shape[-1])
        kth = torch.topk(logits, k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # [V]
    return int(torch.multinomial(probs, 1, generator=generator))


# ---- generation ----------------------------------------------------------------------------


def _check_prompt(input_ids: Tensor) -> None:
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 1:
        shape = list(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise TjdkitError(f"decoding takes input_ids of shape [1, T] with T >= 1, got {shape}")


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
    generator: Optional[torch.Generator] = None,
) -> tuple[list[int], DecodeStats]:
    """Generate up to `max_new_tokens` after the prompt -> (new token ids, stats).

    Stops after the first token in `eos_token_ids` (which is kept in the output).
    mode "ar": one token per forward from the model's own distribution (greedy when
    temperature == 0, else sampled with temperature and top_k from `generator`).
    mode "draft": `head.draft` proposes H tokens from the hidden state at the end of the
    sequence (greedy when temperature == 0, else sampled at that temperature); all are kept
    (cut at EOS or max_new_tokens) and fed through the model in ONE forward for the next
    hidden state. Lossy: the tokens follow the head's joint, not the model.
    """
    if mode not in MODES:
        raise TjdkitError(f"unknown decoding mode {mode!r} (choose from {', '.join(MODES)})")
    if mode == "draft" and head is None:
        raise TjdkitError("draft decoding needs a head")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise TjdkitError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise TjdkitError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if mode == "draft" and top_k and temperature > 0:
        raise TjdkitError("top_k is not supported in draft mode (the head samples from its full conditionals)")
    _check_prompt(input_ids)

    eos = set(int(t) for t in (eos_token_ids or ()))
    stats = DecodeStats(mode=mode)
    start = time.perf_counter()
    device = next(model.parameters()).device
    ids = input_ids.to(device)  # [1, n]: what the next forward appends to the cache (the prompt first)
    cache = _new_cache(model)
    out: list[int] = []
    done = max_new_tokens == 0

    while not done:
        if mode == "ar":
            logits = _next_logits(model, ids, cache)  # [V]
            stats.forwards += 1
            chunk = [_pick(logits, temperature, top_k, generator)]
        else:
            hidden = _next_hidden(model, ids, cache)  # [1, D]
            stats.forwards += 1
            tokens, _ = head.draft(hidden, greedy=temperature == 0, temperature=temperature or 1.0, generator=generator)
            chunk = tokens[0].tolist()  # H tokens
        chunk, hit_eos = _cut(chunk, max_new_tokens - len(out), eos)
        out += chunk
        if mode == "draft":
            stats.accepted.append(len(chunk))
        done = hit_eos or len(out) >= max_new_tokens
        ids = torch.tensor([chunk], dtype=input_ids.dtype, device=device)  # [1, len(chunk)]

    if out:
        # Feed the last step's tokens too: every step then costs one forward and the cache ends
        # holding prompt + output (a verified decoder runs this forward anyway, to verify).
        model.base_model(input_ids=ids, past_key_values=cache, use_cache=True)
        stats.forwards += 1
    stats.new_tokens = len(out)
    stats.seconds = time.perf_counter() - start
    return out, stats


# ---- acceptance ----------------------------------------------------------------------------


@torch.no_grad()
def acceptance(model, head, input_ids: Tensor, continuation) -> DecodeStats:
    """Teacher-forced draft acceptance of `continuation` (token ids after the [1, T] prompt).

    One forward over prompt + continuation gives every hidden state. A step at continuation
    index i drafts H tokens greedily from the hidden state that predicts continuation[i],
    accepts the longest prefix equal to continuation[i:i+H], and moves on by accepted + 1,
    the +1 being the token a greedy speculative verifier supplies. The continuation's last
    token always counts as that verifier token (accepted <= remaining - 1), so the steps are
    exactly a verified decoder's and sum(accepted + 1) == len(continuation):
    `tokens_per_forward == mean(accepted + 1)`, and `forwards` is 1 + steps (prefill + one
    verify forward per step) although only one forward actually runs here.
    """
    from tjdkit.windows import last_hidden

    _check_prompt(input_ids)
    start = time.perf_counter()
    device = next(model.parameters()).device
    target = torch.as_tensor(list(continuation), dtype=torch.long).reshape(-1)  # [N]
    n, t, h = target.numel(), input_ids.shape[1], head.horizon
    stats = DecodeStats(mode="acceptance", new_tokens=n)
    if n == 0:
        stats.seconds = time.perf_counter() - start
        return stats

    full = torch.cat([input_ids.to(device), target[None].to(device, input_ids.dtype)], dim=1)  # [1, T+N]
    hidden = last_hidden(model, full, torch.ones_like(full))[0]  # [T+N, D]; row p predicts token p+1
    i = 0
    while i < n:
        drafted, _ = head.draft(hidden[t - 1 + i][None], greedy=True)  # [1, H]
        room = min(h, n - i - 1)  # draft tokens that can be accepted; the verifier supplies one more
        match = drafted[0, :room].cpu() == target[i : i + room]  # [room]
        accepted = int(match.long().cumprod(0).sum())  # length of the matching prefix
        stats.accepted.append(accepted)
        i += accepted + 1
    stats.forwards = 1 + len(stats.accepted)
    stats.seconds = time.perf_counter() - start
    return stats


__all__ = ["MODES", "DecodeStats", "acceptance", "generate"]
