"""Decoding speed, measured honestly: every mode on the same prompts, in one process, interleaved.

    run = resolve_head_run("gemma3", "cp", rank=4, horizon=4, dataset="stemp")  # trains once, then cached
    result = run_bench(model, tokenizer, head, prompts, modes=("ar", "verify"), max_new_tokens=128)

Modes: tjdkit's own `ar`, `draft` and `verify` (tjdkit.decoding), and two transformers
baselines on the same model: `hf` (its plain greedy `generate`, to show tjdkit's `ar` is
a fair reference) and `lookup` (its assisted decoding with prompt lookup, the peer
lossless speed-up that needs no trained drafter); `assisted`, asked for by name, is transformers'
generate drafting with the head (`tjdkit.attach_head`): the head's drafts in transformers' own loop.
All greedy. Each mode runs once on a short generation before timing (warm-up); then, prompt by
prompt, every mode runs in a rotating order so that drift in machine speed spreads evenly over the modes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch

from tjdkit.bench.measure import ForwardCounter, PeakMemory
from tjdkit.bench.modes import BENCH_MODES, DEFAULT_MODES, LOSSLESS, NEEDS_HEAD, PLAIN, VERIFYING
from tjdkit.decoding import DecodeStats, parse_modes
from tjdkit.decoding.drafters import DRAFTERS, LOOKUP_TOKENS  # hf's lookup mode and tjdkit's lookup drafts alike
from tjdkit.errors import TjdkitError


ProgressCallback = Optional[Callable[[str, int, int], None]]


# ---- prompts ------------------------------------------------------------------------------


def bench_prompts(tokenizer, dataset: str, split: str, count: int, seed: int = 0,
                  max_prompt_tokens: int = 4096) -> list[list[int]]:
    """The first `count` prompts of the split that fit in `max_prompt_tokens` (whole prompts, never
    cut: a chat prompt longer than the model's context is skipped), tokenised as training saw them."""
    from tjdkit.config import DataSection
    from tjdkit.data.examples import load_examples

    section = DataSection(dataset=dataset, eval_size=4 * count, max_length=max(max_prompt_tokens, 8) + 1, seed=seed)
    examples = load_examples(section, tokenizer, split)
    prompts = [example.input_ids[: example.prompt_length] for example in examples
               if example.prompt_length <= max_prompt_tokens]
    if not prompts:
        raise TjdkitError(f"no prompts in {dataset}/{split} that fit in {max_prompt_tokens} tokens")
    return prompts[:count]



def read_prompts_file(path) -> list[str]:
    """A user's prompts: one per line, or JSON Lines with a "prompt" field (for prompts that span
    lines). Blank lines are skipped; anything else unreadable is one error line."""
    import json
    from pathlib import Path

    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise TjdkitError(f"prompts file not found: {path}") from None
    except IsADirectoryError:
        raise TjdkitError(f"--prompts-file {path} is a directory, not a file") from None
    except OSError as exc:
        raise TjdkitError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise TjdkitError(f"{path} is not UTF-8 text (byte at offset {exc.start})") from None
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise TjdkitError(f"no prompts in {path}: give one per line, or JSON Lines with a \"prompt\" field")
    if not lines[0][1].lstrip().startswith("{"):
        return [line for _, line in lines]
    prompts = []
    for number, line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            raise TjdkitError(f"{path}:{number}: not a JSON line (the file's first line is JSON, so every line must be)") from None
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise TjdkitError(f"{path}:{number}: no \"prompt\" text in this JSON line")
        prompts.append(prompt)
    return prompts


def file_prompts(tokenizer, path, count: Optional[int] = None) -> list[list[int]]:
    """The first `count` (default: all) prompts of a user's file, tokenised as plain text."""
    texts = read_prompts_file(path)[:count]
    return [tokenizer(text).input_ids for text in texts]


# ---- measuring ----------------------------------------------------------------------------


@dataclass
class Run:
    """One mode on one prompt."""

    tokens: list[int]
    seconds: float
    prefill_seconds: float  # until the prompt's last forward returned: the part every mode pays alike
    forwards: int
    peak_bytes: int
    stats: Optional[DecodeStats] = None  # tjdkit's own modes: what the decoding loop did


def _run_mode(model, head, mode: str, prompt: list[int], max_new_tokens: int, eos: list[int], drafter: str) -> Run:
    from tjdkit.decoding import attach_head, detach_head, generate
    from tjdkit.decoding.forward import new_cache, prefill_chunk
    from tjdkit.kernels import measured_output_kernel

    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    counter = ForwardCounter(model, prompt_length=len(prompt))
    try:
        with PeakMemory(device) as memory:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            stats = None
            with torch.inference_mode():
                if mode in ("hf", "lookup", "assisted"):
                    extra = {"prompt_lookup_num_tokens": LOOKUP_TOKENS} if mode == "lookup" else {}
                    # the prompt in the chunks tjdkit's modes feed it in, where transformers supports that (its greedy
                    # `generate`; its assisted and prompt-lookup loops feed the prompt whole, as of transformers 5.24)
                    extra["prefill_chunk_size"] = prefill_chunk(model, new_cache(model))
                    attached = attach_head(model, head) if mode == "assisted" else None
                    try:
                        with measured_output_kernel(model):  # the output kernel tjdkit's modes use
                            output = model.generate(
                                ids,
                                attention_mask=torch.ones_like(ids),
                                do_sample=False,
                                max_new_tokens=max_new_tokens,
                                eos_token_id=eos,
                                pad_token_id=eos[0],
                                **extra,
                            )
                    finally:
                        if attached is not None:
                            detach_head(model)
                    stats = attached.stats if attached is not None else None  # the head's forwards and drafts
                    tokens = output[0, ids.shape[1] :].tolist()
                else:
                    tokens, stats = generate(model, ids, mode=mode, head=head, max_new_tokens=max_new_tokens, eos_token_ids=eos,
                                             drafter=drafter)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
    finally:
        counter.close()
    prefill = counter.prompt_done_at - start if counter.prompt_done_at is not None else seconds
    return Run(tokens, seconds, prefill, counter.count, memory.peak_bytes, stats)


def _first_difference(a: list[int], b: list[int]) -> int:
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return min(len(a), len(b))


def _summary(mode: str, runs: list[Run], horizon: int) -> dict:
    totals = DecodeStats("verify" if mode in VERIFYING else mode)
    for run in runs:
        loop = run.stats or DecodeStats(mode)  # the loop's own counts; transformers' modes have none
        # the run's tokens, forwards (counted on the model) and time, with the loop's drafts, steps and rows
        totals.merge(replace(loop, new_tokens=len(run.tokens), forwards=run.forwards, seconds=run.seconds))
    row = {
        "new_tokens": totals.new_tokens,
        "seconds": totals.seconds,
        "tokens_per_second": totals.tokens_per_second,
        "ms_per_token": 1000 * totals.seconds / totals.new_tokens if totals.new_tokens else 0.0,
        "seconds_per_prompt": totals.seconds / len(runs) if runs else 0.0,
        **_prefill_and_decode(runs),
        "forwards": totals.forwards,
        "tokens_per_forward": totals.tokens_per_forward,
        "peak_memory_mb": max((run.peak_bytes for run in runs), default=0) / 2**20,
    }
    if mode in VERIFYING:
        row["tau"] = totals.tau
        row["acceptance_by_position"] = totals.acceptance_by_position()
        row["drafts_per_step"] = horizon - 1  # the head's; a lookup step offers up to LOOKUP_TOKENS
    if mode == "verify":
        row["lookup_share"] = totals.lookup_steps / totals.steps if totals.steps else 0.0  # steps drafted by lookup
        row["tree_share"] = totals.tree_steps / totals.steps if totals.steps else 0.0  # steps that verified a token tree
        row["output_rows_per_step"] = totals.output_rows / totals.steps if totals.steps else 0.0  # logits rows computed
    return row


def _prefill_and_decode(runs: list[Run]) -> dict:
    """The prompt's time and the decoding's rate apart: a long prompt's prefill costs every mode the same
    and dilutes every end-to-end ratio (a 3174-token prompt takes ~6 s on a 2-core CPU, more than 128
    tokens of verify). Decoding: the tokens after the first (which the prefill's logits give) over the
    time after the prompt's last forward."""
    prefill = sum(run.prefill_seconds for run in runs)
    decode_seconds = sum(run.seconds - run.prefill_seconds for run in runs)
    decode_tokens = sum(max(len(run.tokens) - 1, 0) for run in runs)
    return {
        "prefill_seconds": prefill,
        "decode_tokens_per_second": decode_tokens / decode_seconds if decode_seconds > 0 else 0.0,
    }


def run_bench(
    model,
    tokenizer,
    head,
    prompts: list[list[int]],
    modes: tuple[str, ...] = DEFAULT_MODES,
    max_new_tokens: int = 128,
    warmup_tokens: int = 16,
    on_progress: ProgressCallback = None,
    drafter: str = "hybrid",
    variants: Optional[dict] = None,
) -> dict:
    """Time every mode on every prompt (interleaved, after a warm-up) -> the result dict.

    `drafter`: where verify's drafts come from (tjdkit.decoding.drafters). `variants`: other
    weight formats of the same model ({"fp16-weights": model, ...}, tjdkit.models.quantize.weights_copy),
    timed in the same rotation; the result's top level is `model`'s, `by_dtype` holds every
    format's (ratios and parity inside its own format), `dtype_speedups` each format's tok/s
    over `model`'s mode by mode, and `dtype_agreement` how many of a format's greedy outputs
    equal `model`'s (fp16-weights and bfloat16 are close to float32, not equal)."""
    from tjdkit.models.quantize import weight_format

    modes = parse_modes(modes, BENCH_MODES, what="bench mode")
    if drafter not in DRAFTERS:
        raise TjdkitError(f"unknown drafter {drafter!r} (choose from {', '.join(DRAFTERS)})")
    needing_head = [mode for mode in modes if mode in NEEDS_HEAD and not (mode == "verify" and drafter == "lookup")]
    if head is None and needing_head:
        raise TjdkitError(f"{' and '.join(needing_head)} need a head")
    report = on_progress or (lambda _stage, _done, _total: None)
    eos = [tokenizer.eos_token_id]
    horizon = head.horizon if head is not None else 1
    models = {weight_format(model): model, **(variants or {})}
    pairs = [(dtype, mode) for dtype in models for mode in modes]  # what one prompt runs, in rotation

    for done, (dtype, mode) in enumerate(pairs):
        report("warm-up", done, len(pairs))
        _run_mode(models[dtype], head, mode, prompts[0], min(warmup_tokens, max_new_tokens), eos, drafter)
    report("warm-up", len(pairs), len(pairs))

    runs: dict[tuple[str, str], list[Run]] = {pair: [] for pair in pairs}
    total = len(prompts) * len(pairs)
    for index, prompt in enumerate(prompts):
        order = pairs[index % len(pairs) :] + pairs[: index % len(pairs)]  # rotate: no mode always goes first
        for position, (dtype, mode) in enumerate(order):
            runs[dtype, mode].append(_run_mode(models[dtype], head, mode, prompt, max_new_tokens, eos, drafter))
            report("bench", index * len(pairs) + position + 1, total)

    by_dtype = {dtype: _format_result(tokenizer, {mode: runs[dtype, mode] for mode in modes}, horizon)
                for dtype in models}
    first = next(iter(models))
    result: dict = {"dtype": first, **by_dtype[first]}
    if len(models) > 1:
        result["by_dtype"] = by_dtype
        result["dtype_speedups"] = {
            dtype: {mode: _ratio(by_dtype[dtype]["modes"][mode], by_dtype[first]["modes"][mode]) for mode in modes}
            for dtype in models if dtype != first
        }
        reference = next((mode for mode in ("ar", "hf") if mode in modes), None)  # plain greedy output
        if reference:
            result["dtype_agreement"] = {
                dtype: {"mode": reference, "identical_prompts": sum(
                    ours.tokens == theirs.tokens for ours, theirs in zip(runs[dtype, reference], runs[first, reference])
                ), "prompts": len(prompts)}
                for dtype in models if dtype != first
            }
    return result


def _format_result(tokenizer, runs: dict[str, list[Run]], horizon: int) -> dict:
    """One weight format's rows, baselines, parity against its own plain decoding (`ar`, else `hf`),
    and per-prompt numbers."""
    modes = list(runs)
    result: dict = {"modes": {mode: _summary(mode, runs[mode], horizon) for mode in modes}}
    result["baselines"] = speedups(result["modes"])
    reference = next((mode for mode in PLAIN if mode in runs), None)
    if reference is not None and len(runs) > 1:
        result["parity"] = _parity(tokenizer, runs, reference)
        result["parity_reference"] = reference
    count = len(runs[modes[0]])
    result["per_prompt"] = [
        {mode: {"tokens": len(runs[mode][i].tokens), "seconds": runs[mode][i].seconds,
                "prefill_seconds": runs[mode][i].prefill_seconds} for mode in modes}
        for i in range(count)
    ]
    result["outputs"] = {mode: [runs[mode][i].tokens for i in range(count)] for mode in modes}
    return result


def _ratio(row: dict, base: dict) -> float:
    return row["tokens_per_second"] / base["tokens_per_second"] if base["tokens_per_second"] else 0.0


RATES = {"": "tokens_per_second", "decode_": "decode_tokens_per_second"}  # ratio-key prefix -> the rate it divides


def speedups(rows: dict[str, dict]) -> dict[str, str]:
    """Each mode's rate over the strongest alternative a user has, in place -> which mode each ratio
    divides by. `speedup`: tokens/s over the fastest plain lossless decoding in the run (tjdkit's `ar`
    or transformers' `hf`, whichever ran faster); `speedup_vs_lookup`: over transformers' prompt lookup,
    the lossless speed-up that needs no training. `decode_speedup` and `decode_speedup_vs_lookup`: the
    same for the decoding rate after the prompt, each over the plain mode that decoded faster."""
    baselines: dict[str, str] = {}
    for prefix, rate in RATES.items():
        chosen: dict[str, str] = {}
        plain = [mode for mode in PLAIN if mode in rows and rate in rows[mode]]
        if plain:
            chosen[f"{prefix}speedup"] = max(plain, key=lambda mode: rows[mode][rate])
        if rate in rows.get("lookup", {}):
            chosen[f"{prefix}speedup_vs_lookup"] = "lookup"
        for key, mode in chosen.items():
            base = rows[mode][rate]
            for row in rows.values():
                row[key] = row[rate] / base if base else 0.0
        baselines.update(chosen)
    return baselines


def _parity(tokenizer, runs: dict[str, list[Run]], reference_mode: str) -> dict:
    """Per mode: do its outputs equal the plain `reference_mode`'s, prompt by prompt? Lossless modes
    must; draft need not."""
    parity: dict = {}
    for mode, mode_runs in runs.items():
        if mode == reference_mode:
            continue
        diffs = []
        for index, (ours, reference) in enumerate(zip(mode_runs, runs[reference_mode])):
            if ours.tokens != reference.tokens:
                at = _first_difference(ours.tokens, reference.tokens)
                diffs.append({
                    "prompt": index,
                    "first_difference": at,
                    reference_mode: tokenizer.decode(reference.tokens[max(at - 8, 0) : at + 8]),
                    mode: tokenizer.decode(ours.tokens[max(at - 8, 0) : at + 8]),
                })
        parity[mode] = {
            "identical": not diffs,
            "identical_prompts": len(mode_runs) - len(diffs),
            "lossless": mode in LOSSLESS,
            "diffs": diffs,
        }
    return parity

