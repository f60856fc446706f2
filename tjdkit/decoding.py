"""KV-cached decoding: the base model alone (`ar`), a joint head alone (`draft`), or both (`verify`).

    tokens, stats = generate(model, input_ids, mode="ar", max_new_tokens=64)
    tokens, stats = generate(model, input_ids, mode="verify", head=head, eos_token_ids=[eos])
    stats = acceptance(model, head, input_ids, continuation)   # teacher-forced, no generation

`draft` is TJDNet's joint decoding: the head's joint distribution replaces the model's
chain rule for H tokens at a time; lossy by design, about one model forward per H tokens.

`verify` is lossless self-speculative decoding. Every forward feeds [the last chosen
token x, then H-1 drafts]; its logits verify the drafts and its hidden states feed the
next draft. The head drafts from the hidden state that predicted x, *conditioned on x*
(`head.draft(first=x)`): its first position is already decided by the verifier, so a
head of horizon H offers H-1 drafts and a forward yields up to H tokens. Greedy: the
drafts are accepted while they equal the model's argmax, then the model's own token
follows (output identical to `ar`). Sampling: the speculative-sampling rule (accept with
min(1, p/q), else resample from max(0, p - q) normalised; all accepted: a bonus token
from p), so tokens follow the model's own distribution. Rejected drafts are cropped off
the KV cache (sliding-window layers record their past for that).

Accounting, the same in every mode: `forwards` counts every model forward, the prefill
included, and nothing runs after the last token is chosen. So `ar` makes exactly one
token per forward, `draft` up to H, and `verify` 1 + accepted drafts per verify forward
(`tau`). Batch size 1 throughout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor

from tjdkit.errors import TjdkitError

MODES = ("ar", "draft", "verify")
HEAD_MODES = ("draft", "verify")


@dataclass
class DecodeStats:
    mode: str  # "ar", "draft", "verify" or "acceptance"
    new_tokens: int = 0
    forwards: int = 0  # model forward calls, the prefill included (acceptance: those verify would run)
    seconds: float = 0.0
    # draft: tokens kept per head call. verify / acceptance: drafts accepted per verify forward.
    accepted: list[int] = field(default_factory=list)
    # verify / acceptance: drafts offered per verify forward (H-1, fewer near max_new_tokens).
    offered: list[int] = field(default_factory=list)

    @property
    def tokens_per_forward(self) -> float:
        """new_tokens / forwards, the prefill included: 1.0 for `ar`, about H for `draft`."""
        return self.new_tokens / self.forwards if self.forwards else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def tau(self) -> float:
        """Mean tokens per verify forward (accepted drafts + the model's own token); 1.0 for `ar`."""
        if self.mode in ("verify", "acceptance"):
            return sum(a + 1 for a in self.accepted) / len(self.accepted) if self.accepted else 0.0
        return self.tokens_per_forward

    def acceptance_by_position(self) -> list[float]:
        """Per draft position j = 1..: the share of the drafts offered there that were accepted."""
        return acceptance_rates(self.accepted, self.offered)


def acceptance_rates(accepted: list[int], offered: list[int]) -> list[float]:
    """Draft j (1-based) is accepted in a step iff accepted >= j; it was offered iff offered >= j."""
    depth = max(offered, default=0)
    rates = []
    for j in range(1, depth + 1):
        tried = sum(o >= j for o in offered)
        rates.append(sum(a >= j for a, o in zip(accepted, offered) if o >= j) / tried if tried else 0.0)
    return rates


# ---- one forward ---------------------------------------------------------------------------


def _new_cache(model):
    """An empty DynamicCache shaped by the config, so sliding-window layers (Gemma 3) keep only their window."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _next_logits(model, ids: Tensor, cache) -> Tensor:
    """ids [1, n] appended to the cache -> next-token logits [V] (float32) at the last position."""
    hidden = model.base_model(input_ids=ids, cache=cache, use_cache=True).last_hidden_state[0, -1:]  # [1, D]
    return output_logits(model, hidden)[0]


def _next_hidden(model, ids: Tensor, cache) -> Tensor:
    """ids [1, n] appended to the cache -> final normed hidden state [1, D] at the last position.

    Runs the backbone only (no lm_head): the head needs what lm_head would see, which is
    also what `tjdkit.windows.last_hidden` gives the head during training.
    """
    out = model.base_model(input_ids=ids, cache=cache, use_cache=True)
    return out.last_hidden_state[:, -1]


def output_logits(model, hidden: Tensor) -> Tensor:
    """hidden [n, D] (final normed states) -> the model's logits [n, V], float32.

    Soft-capping (Gemma 2 style configs) is applied as the model's own forward does.
    """
    return soft_cap(model, raw_logits(model, hidden))


def raw_logits(model, hidden: Tensor) -> Tensor:
    """hidden [n, D] -> the output layer's logits [n, V] before any soft-capping, float32.

    On the CPU, a few rows go through the output layer as weight @ hidden^T: that GEMM runs
    2-4x faster than nn.Linear's path for n <= 16 on the 262k-row Gemma vocabulary (a single
    row is padded to two, where the matrix-vector path is slower). ar, verify and TNOT all
    come through here, so a speed-up here is shared and comparisons between them stay fair.
    """
    layer = model.get_output_embeddings()
    n = hidden.shape[0]
    if isinstance(layer, torch.nn.Linear) and hidden.device.type == "cpu" and n <= 16:
        x = hidden.to(layer.weight.dtype)
        if n == 1:
            x = torch.cat([x, torch.zeros_like(x)])
        logits = (layer.weight @ x.T).T[:n]  # [n, V]
        if layer.bias is not None:
            logits = logits + layer.bias
    else:
        logits = layer(hidden)
    return logits.float()


def soft_cap(model, logits: Tensor) -> Tensor:
    """cap * tanh(logits / cap) when the config sets final_logit_softcapping, else the logits as they are."""
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def _hidden_and_logits(model, ids: Tensor, cache, last_only: bool = False) -> tuple[Tensor, Tensor]:
    """ids [1, n] appended to the cache -> hidden states [n, D] and logits [n, V] (float32) at
    every position, or [1, V] at the last one only (`last_only`, for a prefill)."""
    hidden = model.base_model(input_ids=ids, cache=cache, use_cache=True).last_hidden_state[0]  # [n, D]
    return hidden, output_logits(model, hidden[-1:] if last_only else hidden)


@dataclass
class Sampling:
    """How the model's logits become the distribution tokens are chosen from, in
    transformers' order: repetition penalty, then temperature, top-k and top-p. Greedy
    (temperature 0) takes the argmax after the penalty."""

    temperature: float = 0.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    repetition_penalty: float = 1.0

    @classmethod
    def from_generation(cls, section) -> "Sampling":
        """A recipe's `generation` section; top-k 0 means no filter, and greedy ignores the filters."""
        return cls(section.temperature, section.top_k or None, section.top_p, section.repetition_penalty)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def penalise(self, logits: Tensor, context: Tensor) -> Tensor:
        """logits [V], context [n] token ids seen so far -> logits with seen tokens made less likely."""
        if self.repetition_penalty == 1.0 or context.numel() == 0:
            return logits
        seen = logits.gather(0, context)
        seen = torch.where(seen < 0, seen * self.repetition_penalty, seen / self.repetition_penalty)
        return logits.scatter(0, context, seen)

    def probs(self, logits: Tensor) -> Tensor:
        """Penalised logits [..., V] -> the sampling distribution [..., V]: tempered, top-k and top-p filtered."""
        logits = logits / self.temperature
        if self.top_k:  # None or 0: no filter
            kth = torch.topk(logits, min(int(self.top_k), logits.shape[-1])).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p is not None and self.top_p < 1.0:
            ordered, order = torch.sort(logits, descending=True)
            mass_before = torch.softmax(ordered, dim=-1).cumsum(-1) - torch.softmax(ordered, dim=-1)
            drop = mass_before > self.top_p  # keep the smallest prefix holding top_p of the mass
            logits = logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
        return torch.softmax(logits, dim=-1)

    def pick(self, logits: Tensor, generator) -> int:
        """Penalised logits [V] -> one token: the argmax, or a sample."""
        if self.greedy:
            return int(logits.argmax())
        return int(torch.multinomial(self.probs(logits), 1, generator=generator))


# ---- generation ----------------------------------------------------------------------------


def _check_prompt(input_ids: Tensor) -> None:
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
    mode "verify": lossless self-speculative decoding (see the module docstring).
    """
    if mode not in MODES:
        raise TjdkitError(f"unknown decoding mode {mode!r} (choose from {', '.join(MODES)})")
    if mode in HEAD_MODES and head is None:
        raise TjdkitError(f"{mode} decoding needs a head")
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
    _check_prompt(input_ids)
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
        out = _verify(model, head, ids, max_new_tokens, eos, sampling, generator, stats, emit)
    else:
        out = _one_model_forward_per_step(model, head, ids, mode, max_new_tokens, eos, sampling, generator, stats, emit)
    stats.new_tokens = len(out)
    stats.seconds = time.perf_counter() - start
    return out, stats


def _context(ids: Tensor, tokens: list[int]) -> Tensor:
    """The prompt [1, T] and the tokens after it as one id vector [T + n] (for the repetition penalty)."""
    return torch.cat([ids[0], torch.tensor(tokens, dtype=ids.dtype, device=ids.device)])


def _one_model_forward_per_step(model, head, ids, mode, max_new_tokens, eos, sampling, generator, stats, emit):
    """ar and draft: each forward appends the last step's tokens and chooses the next 1 (ar) or H (draft)."""
    cache = _new_cache(model)
    out: list[int] = []
    feed = ids
    while True:
        if mode == "ar":
            logits = _next_logits(model, feed, cache)  # [V]
            chunk = [sampling.pick(sampling.penalise(logits, _context(ids, out)), generator)]
        else:
            hidden = _next_hidden(model, feed, cache)  # [1, D]
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


def _verify(model, head, ids, max_new_tokens, eos, sampling, generator, stats, emit) -> list[int]:
    """Self-speculative decoding: one forward per step verifies the last drafts and feeds the next."""
    device = ids.device
    cache = _new_cache(model)
    hidden, logits = _hidden_and_logits(model, ids, cache, last_only=True)  # prefill: [T, D], [1, V]
    stats.forwards += 1
    cache.activate_past_recording()  # after the prefill: sliding-window layers keep what a rollback needs
    token = sampling.pick(sampling.penalise(logits[-1], ids[0]), generator)  # the first new token, the model's own
    state = hidden[-1:]  # [1, D]: the hidden state that predicted `token`
    out = [token]
    emit([token])

    while token not in eos and len(out) < max_new_tokens:
        room = max_new_tokens - len(out)  # tokens this step may add: accepted drafts + the model's own
        first = torch.tensor([token], device=device)
        drafts: list[int] = []
        q = None  # [n, V]: the head's conditionals the drafts were drawn from
        if room > 1 and head.horizon > 1 and bool(head.in_vocab(first).all()):
            drafted, q_all = head.draft(
                state,
                greedy=sampling.greedy,
                temperature=sampling.temperature or 1.0,
                generator=generator,
                first=first,
                conditionals=not sampling.greedy,  # greedy acceptance compares tokens only
            )
            n = min(head.horizon - 1, room - 1)
            drafts = drafted[0, 1 : 1 + n].tolist()
            q = q_all[0, 1 : 1 + n].to(device) if q_all is not None else None
        feed = torch.tensor([[token] + drafts], dtype=ids.dtype, device=device)  # [1, 1 + n]
        hidden, logits = _hidden_and_logits(model, feed, cache)  # row j predicts the token after feed[j]
        stats.forwards += 1

        new: list[int] = []
        for j, draft in enumerate(drafts):
            row = sampling.penalise(logits[j], _context(ids, out + new))
            if sampling.greedy:
                ok = int(row.argmax()) == draft
            else:
                u = float(torch.rand((), generator=generator))
                ok = u * float(q[j, draft]) < float(sampling.probs(row)[draft])  # u < min(1, p/q)
            if not ok:
                break
            new.append(draft)
            if draft in eos:
                break
        accepted = len(new)
        if not (new and new[-1] in eos):
            row = sampling.penalise(logits[accepted], _context(ids, out + new))
            rejected_q = q[accepted] if q is not None and accepted < len(drafts) else None
            new.append(_model_token(row, rejected_q, sampling, generator))
        stats.accepted.append(accepted)
        stats.offered.append(len(drafts))
        cache.crop(-(len(drafts) - accepted))  # drop rejected drafts; crop(0) trims sliding windows
        state = hidden[accepted : accepted + 1]  # [1, D]: predicted new[-1]
        out += new
        emit(new)
        token = new[-1]
    return out


def _model_token(logits: Tensor, q: Optional[Tensor], sampling: Sampling, generator) -> int:
    """The model's token after the accepted drafts: argmax; or a sample from p, or from the
    residual max(0, p - q) normalised when the draft drawn from q was rejected."""
    if sampling.greedy:
        return int(logits.argmax())
    p = sampling.probs(logits)
    if q is not None:
        residual = (p - q).clamp(min=0)
        total = float(residual.sum())
        if total > 0:  # == 0 only when p == q, where a rejection cannot happen
            p = residual / total
    return int(torch.multinomial(p, 1, generator=generator))


# ---- acceptance ----------------------------------------------------------------------------


@torch.no_grad()
def acceptance(model, head, input_ids: Tensor, continuation) -> DecodeStats:
    """Teacher-forced greedy verify steps along `continuation` (token ids after the [1, T] prompt).

    One forward over prompt + continuation gives every hidden state. A step whose last
    chosen token is continuation[i] drafts from the hidden state that predicted it,
    conditioned on it (as `verify` does), accepts the longest draft prefix equal to
    continuation[i+1:], and the token after the accepted drafts is the model's. So the
    steps are exactly greedy `verify`'s when `continuation` is the model's greedy output:
    `accepted`, `offered` and `tau` match, and `forwards` is 1 + steps although only one
    forward runs here.
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
    i = 0  # index of the last chosen token
    while i < n - 1:
        first = target[i : i + 1].to(device)
        room = n - 1 - i  # tokens still to come; the model supplies at least the last one
        offered = min(h - 1, room - 1) if bool(head.in_vocab(first).all()) else 0
        accepted = 0
        if offered > 0:
            drafted, _ = head.draft(hidden[t - 1 + i][None], greedy=True, first=first)  # [1, H]
            match = drafted[0, 1 : 1 + offered].cpu() == target[i + 1 : i + 1 + offered]
            accepted = int(match.long().cumprod(0).sum())  # length of the matching prefix
        stats.accepted.append(accepted)
        stats.offered.append(offered)
        i += accepted + 1
    stats.forwards = 1 + len(stats.accepted)
    stats.seconds = time.perf_counter() - start
    return stats


__all__ = [
    "HEAD_MODES", "MODES", "DecodeStats", "Sampling", "acceptance", "acceptance_rates", "generate", "output_logits",
    "raw_logits", "soft_cap",
]
