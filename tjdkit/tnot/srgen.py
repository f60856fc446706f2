"""SRGen mode: TNOT as the published SRGen decorator and its evaluator loop run it, rule for rule.

The seeds' users were promised identical behaviour, so `enable_tnot` configured from the
environment (and any `TnotConfig(mode="srgen")`) runs these rules instead of tjdkit's own:

- One call is one sample of SRGen's evaluator: "segments", each a generate() of its own with
  a fresh `max_new_tokens` budget. A trigger ends a segment with a forced EOS, which is dropped;
  the next segment re-chooses the same position.
- The first token of every segment (the response's first, the first after a trigger) is never
  checked: SRGen judges entropies only in its generation stage, not in a segment's prefill.
  `optimize_prompt` is SRGen's `prompt_only` at the response's start (its evaluator sets it):
  false, the response starts without that stage, so its first token is checked.
- The i-th trigger is followed by a reflection iff i < max_retries; the max_retries-th by plain
  decoding with entropy control off to the end (max_retries 5: 5 triggers, 4 reflections).
- A segment's prefill fits a delta from zero: the first on CE over the whole prompt, never
  applied; each later one (a reflection) on (1 - w) CE(whole context) + w H(position), applied to
  that one position only. Generation itself never sees a delta.
- The adaptive threshold is max(mean + K * max(std, minimal_std), minimal_threshold) over the
  last N checked entropies of the response, std unbiased, computed in float32 as SRGen does.
- H = -sum p log(p + 1e-10), p = softmax(logits / T), T the environment's `temperature` (1.0),
  whatever the sampling temperature; logits are lm_head(h) in the model's dtype (no soft cap:
  SRGen's forward calls lm_head itself).
- Without the evaluator's loop (`reflect=False`, the environment's `entropy_control` without
  `use_entropy_control`), the first trigger ends the response with EOS.

Kept from tjdkit: token ids are never re-tokenised (SRGen decodes and re-encodes the context at
each retry, which drops a chat template's special tokens) and the context is not re-encoded:
the final hidden states of every position are kept ([n, D], small), their logits computed when a
reflection needs them. Each row of a batch is its own sample; no state carries over between calls.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor

from tjdkit.decoding import Sampling, new_cache, raw_logits
from tjdkit.decoding.context import context_length
from tjdkit.errors import TjdkitError
from tjdkit.tnot.config import TnotConfig
from tjdkit.tnot.delta import fit_delta
from tjdkit.tnot.results import TnotResult, TokenRecord


@dataclass(frozen=True)
class SrgenOptions:
    """SRGen settings that are no TnotConfig field, read from the environment at every call as SRGen does."""

    temperature: float = 1.0  # of the entropies (trigger and reflection loss), not of the sampling

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "SrgenOptions":
        from tjdkit.tnot.env import _parse

        env = os.environ if environ is None else environ
        temperature = _parse("temperature", env["temperature"], float) if "temperature" in env else 1.0
        if not temperature > 0:
            raise TjdkitError(f"environment variable temperature={env['temperature']!r} must be > 0")
        return cls(temperature)


def srgen_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """logits [..., V] -> SRGen's entropy [...]: -sum p log(p + 1e-10), p = softmax(logits / T), in the logits' dtype."""
    p = torch.softmax(logits / temperature, dim=-1)
    return -(p * torch.log(p + 1e-10)).sum(-1)


def srgen_threshold(history: Sequence[float], config: TnotConfig) -> float:
    """The threshold the next checked token is judged by, from the entropies checked before it.

    Static until `window` entropies were checked (adaptive), then over the last `window` of them
    in float32 with the unbiased std. Python's max keeps a NaN std (a window of 1), which makes
    the threshold NaN: nothing triggers, as in SRGen.
    """
    if not config.adaptive or len(history) < config.window:
        return config.entropy_threshold
    recent = torch.tensor(list(history[-config.window :]), dtype=torch.float32)  # [N]
    std = recent.std() if len(recent) > 1 else recent.new_tensor(float("nan"))  # what torch.std gives, without its warning
    spread = max(std, config.min_std)
    return max((recent.mean() + config.k * spread).item(), config.floor)


def forced_eos_id(model, eos: list[int]) -> Optional[int]:
    """The token SRGen forces at a trigger: the config's eos_token_id (the lowest of several, which
    argmax picks among equal logits), else the first stop id."""
    configured = getattr(model.config, "eos_token_id", None)
    if isinstance(configured, (list, tuple)):
        configured = min(configured) if configured else None
    return int(configured) if configured is not None else (eos[0] if eos else None)


def srgen_generate(
    model,
    rows: list[Tensor],  # one [T] long tensor of real tokens per sample (no padding)
    config: TnotConfig,
    *,
    max_new_tokens: int,  # per segment, as each of SRGen's generate() calls gets it
    eos: list[int],
    sampling: Sampling,
    generator: Optional[torch.Generator] = None,
    on_token: Optional[Callable[[int, TokenRecord], None]] = None,
    options: Optional[SrgenOptions] = None,
) -> list[TnotResult]:
    """One TnotResult per sample, each run as SRGen's evaluator runs one (the rules above).

    Records: `threshold` is None for a token whose position was never checked; a trigger's
    entropy, threshold and `before` (the raw argmax) stay on the token that replaces the dropped
    EOS, with `reflected` and `entropy_after` when a reflection chose it.
    """
    options = options or SrgenOptions.from_env()
    forced = forced_eos_id(model, eos)
    if config.entropy_control and not config.reflect and forced is None:
        raise TjdkitError("SRGen ends high-entropy responses with EOS, but the model has no eos_token_id (pass eos_token_ids)")
    started = time.perf_counter()
    results, forwards = [], 0
    for index, prompt in enumerate(rows):
        result = _sample(model, prompt, config, options, max_new_tokens, eos, forced, sampling, generator,
                         (lambda record, index=index: on_token(index, record)) if on_token is not None else None)
        forwards += result.forwards
        results.append(result)
    seconds = time.perf_counter() - started
    for result in results:
        result.seconds, result.forwards = seconds, forwards
        result.forced_eos = any(record.forced_eos for record in result.records)
    return results


def _sample(model, prompt: Tensor, config, options, max_new_tokens, eos, forced, sampling, generator, emit) -> TnotResult:
    """One sample: the evaluator's segments as one pass, one KV-cached forward per token."""
    result = TnotResult([], [])
    weight = model.get_output_embeddings().weight  # [V, D]
    limit = context_length(model)
    temperature = options.temperature
    cache = new_cache(model)

    def forward(ids: list[int]) -> Tensor:
        feed = torch.tensor([ids], dtype=torch.long, device=weight.device)
        return model.base_model(input_ids=feed, cache=cache, use_cache=True).last_hidden_state[0]  # [n, D]

    states = [forward(prompt.tolist())]  # final hidden states of every context position, [n, D] chunks
    result.forwards = 1
    context = prompt.tolist()
    history: list[float] = []  # every checked entropy, across the segments (SRGen's entropy_history)
    looping = config.entropy_control and config.reflect  # the evaluator's retry loop
    skip_loop = looping and config.max_retries == 0  # its while-loop never runs: one plain generate()
    prefill_stage = config.optimize_prompt and not skip_loop  # SRGen's prompt stage (prompt_only) at a segment's start
    checking = config.entropy_control and not skip_loop
    delta_fitted = False  # SRGen's `model.delta is not None`
    triggers = in_segment = 0
    pending: Optional[TokenRecord] = None  # the trigger whose position is being re-chosen
    if max_new_tokens == 0:
        return result
    while True:
        row = raw_logits(model, states[-1][-1:])[0]  # [V] float32
        value = srgen_entropy(row.to(weight.dtype), temperature)  # 0-d, of the logits as SRGen's lm_head gives them
        record = pending or TokenRecord(len(result.tokens), -1, float(value), None)
        pending, chosen_from = None, row
        if prefill_stage:
            prefill_stage = False
            start = time.perf_counter()
            hidden = torch.cat(states)  # [n, D]
            base = raw_logits(model, hidden[:-1])  # [n - 1, V]: CE over the whole context, no window
            targets = torch.tensor(context[1:], device=row.device)
            if not delta_fitted:  # the prompt delta: fitted, never applied
                delta_fitted = True
                fit = fit_delta(weight, base, targets, config)
                if not result.tokens:
                    result.prompt_losses, result.delta = fit.cross_entropy, fit.delta
                    result.prompt_seconds = time.perf_counter() - start
            else:  # a reflection: this position's logits move by W @ delta
                fit = fit_delta(weight, base, targets, config, focus=row, temperature=temperature)
                chosen_from = row + fit.shift
                record.reflected = True
                record.entropy_after = float(srgen_entropy(chosen_from.to(weight.dtype), temperature))
                result.reflections += 1
                result.reflection_seconds += time.perf_counter() - start
        elif checking:
            record.threshold = srgen_threshold(history, config)
            history.append(value.item())
            if bool(value > record.threshold):  # in the logits' dtype, as SRGen compares
                triggers += 1
                record.before = int(row.argmax())
                if not config.reflect:  # the decorator alone: the forced EOS ends the response
                    record.token, record.forced_eos = forced, True
                    _keep(result, context, record, emit)
                    break
                in_segment = 0  # the forced EOS ended this segment; the next one starts here
                if triggers < config.max_retries:
                    prefill_stage, pending = True, record
                    continue
                checking = False  # retries spent: plain decoding, entropy control off, to the end
        penalty_context = torch.tensor(context, device=row.device) if sampling.repetition_penalty != 1.0 else row.new_empty(0, dtype=torch.long)
        record.token = sampling.pick(sampling.penalise(chosen_from, penalty_context), generator)
        _keep(result, context, record, emit)
        in_segment += 1
        if record.token in eos or in_segment >= max_new_tokens or (limit is not None and len(context) >= limit):
            break
        states.append(forward([record.token]))
        result.forwards += 1
    return result


def _keep(result: TnotResult, context: list[int], record: TokenRecord, emit) -> None:
    result.tokens.append(record.token)
    result.records.append(record)
    context.append(record.token)
    if emit is not None:
        emit(record)
