"""TNOT generation: SLOT's prompt delta, then an entropy trigger with SRGen-style reflection
(tjdkit's rules; `TnotConfig(mode="srgen")` runs the published SRGen's own, tjdkit.tnot.srgen).

    results = tnot_generate(model, input_ids, config=TnotConfig(steps=3), eos_token_ids=[eos])
    results[0].tokens, results[0].records   # the response and one TokenRecord per token

One KV-cached forward per generated token, as plain decoding. The delta only moves the
final hidden state, so the backbone and its cache never see it. Every position's raw
logits are kept as they are computed (the last `context_window` of them), so a
reflection refits a delta from those rows alone: no re-encoding of the context, no extra
backbone forward, no extra output-layer GEMM. Token ids are never re-tokenised, so a chat
template's special tokens reach the model exactly as the template wrote them. In a batch,
each sample has its own delta, threshold history, retry budget and stopping point, and
a new call starts from nothing: no state carries over between prompts.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor

from tjdkit.decoding import Sampling, apply_soft_cap, fit_to_context, new_cache, raw_logits, soft_cap_value
from tjdkit.errors import TjdkitError
from tjdkit.models.quantize import refuse_quantized
from tjdkit.tnot.config import TnotConfig
from tjdkit.tnot.delta import fit_delta
from tjdkit.tnot.results import TnotResult, TokenRecord
from tjdkit.tnot.trigger import EntropyMonitor, entropy


class _Sample:
    """One response's state; made fresh for every call."""

    def __init__(self, prompt: list[int], config: TnotConfig):
        self.context = list(prompt)
        self.out: list[int] = []
        self.monitor = EntropyMonitor(config)
        self.shift: Optional[Tensor] = None  # [V] W @ delta of the prompt stage
        self.rows: deque[Tensor] = deque(maxlen=config.context_window)  # raw logits rows with known next tokens
        self.targets: deque[int] = deque(maxlen=config.context_window)
        self.result = TnotResult([], [])
        self.done = False


def _eos_ids(model, eos_token_ids: Optional[Iterable[int]]) -> list[int]:
    if eos_token_ids is None:
        configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        configured = configured if configured is not None else getattr(model.config, "eos_token_id", None)
        eos_token_ids = configured if isinstance(configured, (list, tuple)) else [configured]
    return [int(t) for t in eos_token_ids if t is not None]


def _check_batch(input_ids, attention_mask) -> Tensor:
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.shape[1] < 1 or input_ids.shape[0] < 1:
        shape = list(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise TjdkitError(f"TNOT takes input_ids of shape [B, T] with B, T >= 1, got {shape}")
    if attention_mask is None:
        return torch.ones_like(input_ids)
    mask = attention_mask.to(input_ids.device).long()
    if mask.shape != input_ids.shape:
        raise TjdkitError(f"attention_mask {list(mask.shape)} does not match input_ids {list(input_ids.shape)}")
    if bool((mask[:, 1:] < mask[:, :-1]).any()) or bool((mask[:, -1] == 0).any()):
        raise TjdkitError("TNOT batches must be left-padded (padding first, every row ending in a real token)")
    return mask


@torch.no_grad()
def tnot_generate(
    model,
    input_ids: Tensor,  # [B, T], left-padded when the prompts differ in length
    attention_mask: Optional[Tensor] = None,
    *,
    config: Optional[TnotConfig] = None,
    max_new_tokens: int = 128,
    eos_token_ids: Optional[Iterable[int]] = None,
    sampling: Optional[Sampling] = None,
    generator: Optional[torch.Generator] = None,
    on_token: Optional[Callable[[int, TokenRecord], None]] = None,
) -> list[TnotResult]:
    """Generate with TNOT -> one TnotResult per row of `input_ids`.

    Greedy unless `sampling` says otherwise; entropies are of softmax(logits / T) with T
    the sampling temperature (1 when greedy). Each response ends after an EOS (kept), at
    `max_new_tokens`, or with a forced EOS when the trigger fires and reflection is off or
    its retries are spent (`on_exhausted: eos`). `on_token(row, record)` sees every token
    as soon as it is chosen. `config.mode == "srgen"` runs SRGen's own rules instead
    (tjdkit.tnot.srgen), where `max_new_tokens` bounds each segment between triggers.
    """
    config = (config or TnotConfig()).check()
    refuse_quantized(model, "TNOT (it fits a delta by gradient descent)")
    sampling = sampling or Sampling()
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise TjdkitError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    mask = _check_batch(input_ids, attention_mask)
    max_new_tokens = fit_to_context(model, input_ids.shape[1], max_new_tokens)
    eos = _eos_ids(model, eos_token_ids)
    if config.mode == "srgen":
        from tjdkit.tnot.srgen import srgen_generate

        rows = [input_ids[b][mask[b].bool()] for b in range(input_ids.shape[0])]
        return srgen_generate(model, rows, config, max_new_tokens=max_new_tokens, eos=eos, sampling=sampling,
                              generator=generator, on_token=on_token)
    can_force = config.entropy_control and (not config.reflect or config.on_exhausted == "eos")
    if can_force and not eos:
        raise TjdkitError("TNOT ends high-entropy responses with EOS, but the model has no eos_token_id (pass eos_token_ids)")
    device = next(model.parameters()).device
    ids, mask = input_ids.to(device), mask.to(device)
    started = time.perf_counter()
    weight = model.get_output_embeddings().weight  # [V, D]
    cap = soft_cap_value(model)
    temperature = sampling.temperature or 1.0
    padded = not bool(mask.all())
    keep_rows = config.optimize_prompt and config.steps > 0
    keep_rows |= config.entropy_control and config.reflect and config.max_retries > 0 and config.steps > 0

    def forward(feed: Tensor) -> Tensor:
        extra = {}
        if padded:  # positions count real tokens only, as transformers' generate does
            extra = {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)[:, -feed.shape[1] :]}
        return model.base_model(input_ids=feed, cache=cache, use_cache=True, **extra).last_hidden_state

    cache = new_cache(model)
    hidden = forward(ids)  # [B, T, D]
    forwards = 1
    samples = [_Sample(ids[b][mask[b].bool()].tolist(), config) for b in range(ids.shape[0])]
    for b, sample in enumerate(samples):
        if keep_rows and len(sample.context) > 1:
            _prompt_stage(model, sample, hidden[b][mask[b].bool()], weight, config, cap)
    last = hidden[:, -1]  # [B, D]
    if max_new_tokens == 0:
        for sample in samples:
            sample.done = True

    while not all(sample.done for sample in samples):
        logits = raw_logits(model, last)  # [B, V]
        feed = []
        for b, sample in enumerate(samples):
            if sample.done:
                feed.append(eos[0] if eos else 0)
                continue
            row = logits[b] if logits.shape[0] == 1 else logits[b].clone()
            record = _choose(model, sample, row, weight, config, cap, temperature, sampling, generator, eos)
            sample.out.append(record.token)
            sample.context.append(record.token)
            sample.result.records.append(record)
            if keep_rows:
                sample.rows.append(row)
                sample.targets.append(record.token)
            if on_token is not None:
                on_token(b, record)
            sample.done = record.token in eos or len(sample.out) >= max_new_tokens
            feed.append(record.token)
        if all(sample.done for sample in samples):
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        last = forward(torch.tensor([feed], dtype=ids.dtype, device=device).T)[:, -1]  # [B, D]
        forwards += 1

    seconds = time.perf_counter() - started
    results = []
    for sample in samples:
        result = sample.result
        result.tokens, result.seconds, result.forwards = sample.out, seconds, forwards
        result.forced_eos = any(r.forced_eos for r in result.records)
        results.append(result)
    return results


def _prompt_stage(model, sample: _Sample, rows: Tensor, weight, config: TnotConfig, cap) -> None:
    """Raw logits of the prompt's positions (kept for reflections) and, if asked, SLOT's delta."""
    start = time.perf_counter()
    window = rows[:-1][-config.context_window :]  # positions whose next token is in the prompt
    targets = sample.context[1:][-config.context_window :]
    base = raw_logits(model, window)  # [m, V]
    sample.rows.extend(base.unbind(0))
    sample.targets.extend(targets)
    if config.optimize_prompt and config.steps > 0:
        fit = fit_delta(weight, base, torch.tensor(targets, device=base.device), config, cap=cap)
        sample.shift = fit.shift
        sample.result.prompt_losses = fit.cross_entropy
        sample.result.delta = fit.delta
    sample.result.prompt_seconds = time.perf_counter() - start


def _choose(model, sample: _Sample, row: Tensor, weight, config, cap, temperature, sampling, generator, eos) -> TokenRecord:
    """The next token: judged by its entropy, reflected on or ended when the trigger fires."""
    logits = apply_soft_cap(row + sample.shift if sample.shift is not None else row, cap)  # [V]
    value = float(entropy(logits, temperature))
    record = TokenRecord(position=len(sample.out), token=-1, entropy=value, threshold=None)
    if config.entropy_control:
        record.threshold = sample.monitor.threshold()
        sample.monitor.observe(value)
        if value > record.threshold:
            record.before = int(logits.argmax())
            if config.reflect and sample.result.reflections < config.max_retries:
                logits = _reflect(sample, row, weight, config, cap, temperature)
                record.reflected = True
                record.entropy_after = float(entropy(logits, temperature))
            elif not config.reflect or config.on_exhausted == "eos":
                record.token, record.forced_eos = eos[0], True
                return record
    context = torch.tensor(sample.context, device=row.device) if sampling.repetition_penalty != 1.0 else row.new_empty(0, dtype=torch.long)
    record.token = sampling.pick(sampling.penalise(logits, context), generator)
    return record


def _reflect(sample: _Sample, row: Tensor, weight, config: TnotConfig, cap, temperature) -> Tensor:
    """A fresh delta for this position from the kept context rows -> the position's new logits [V]."""
    start = time.perf_counter()
    if sample.rows:
        base = torch.stack(list(sample.rows))  # [n, V]
        targets = torch.tensor(list(sample.targets), device=row.device)
    else:
        base, targets = row.new_zeros(0, row.shape[0]), torch.zeros(0, dtype=torch.long, device=row.device)
    fit = fit_delta(weight, base, targets, config, focus=row, temperature=temperature, cap=cap)
    sample.result.reflections += 1
    sample.result.reflection_seconds += time.perf_counter() - start
    return apply_soft_cap(row + fit.shift, cap)
