"""Decoding speed, measured honestly: every mode on the same prompts, in one process, interleaved.

    run = resolve_head_run("gemma3", "cp", rank=4, horizon=4, dataset="stemp")  # trains once, then cached
    result = run_bench(model, tokenizer, head, prompts, modes=("ar", "verify"), max_new_tokens=128)

Modes: tjdkit's own `ar`, `draft` and `verify` (tjdkit.decoding), and two transformers
baselines on the same model: `hf` (its plain greedy `generate`, to show tjdkit's `ar` is
a fair reference) and `lookup` (its assisted decoding with prompt lookup, the peer
lossless speed-up that needs no trained drafter). All greedy. Each mode runs once on a
short generation before timing (warm-up); then, prompt by prompt, every mode runs in a
rotating order so that drift in machine speed spreads evenly over the modes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from tjdkit.bench.measure import ForwardCounter, PeakMemory
from tjdkit.bench.modes import BENCH_MODES, DEFAULT_MODES, LOSSLESS, NEEDS_HEAD, PLAIN
from tjdkit.decoding import DecodeStats, parse_modes
from tjdkit.decoding.drafters import DRAFTERS, LOOKUP_TOKENS  # hf's lookup mode and tjdkit's lookup drafts alike
from tjdkit.errors import TjdkitError


ProgressCallback = Optional[Callable[[str, int, int], None]]


# ---- prompts ------------------------------------------------------------------------------


def bench_prompts(tokenizer, dataset: str, split: str, count: int, seed: int = 0) -> list[list[int]]:
    """The first `count` prompts of the split, tokenised as training saw them."""
    from tjdkit.config import DataSection
    from tjdkit.data.examples import load_examples

    examples = load_examples(DataSection(dataset=dataset, eval_size=count, max_length=4096, seed=seed), tokenizer, split)
    if not examples:
        raise TjdkitError(f"no prompts in {dataset}/{split}")
    return [example.input_ids[: example.prompt_length] for example in examples[:count]]



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
    forwards: int
    peak_bytes: int
    accepted: list[int] = field(default_factory=list)
    offered: list[int] = field(default_factory=list)
    lookup_steps: int = 0


def _run_mode(model, head, mode: str, prompt: list[int], max_new_tokens: int, eos: list[int], drafter: str) -> Run:
    from tjdkit.decoding import generate

    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    counter = ForwardCounter(model)
    try:
        with PeakMemory(device) as memory:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            accepted: list[int] = []
            offered: list[int] = []
            lookup_steps = 0
            with torch.inference_mode():
                if mode in ("hf", "lookup"):
                    extra = {"prompt_lookup_num_tokens": LOOKUP_TOKENS} if mode == "lookup" else {}
                    output = model.generate(
                        ids,
                        attention_mask=torch.ones_like(ids),
                        do_sample=False,
                        max_new_tokens=max_new_tokens,
                        eos_token_id=eos,
                        pad_token_id=eos[0],
                        **extra,
                    )
                    tokens = output[0, ids.shape[1] :].tolist()
                else:
                    tokens, stats = generate(model, ids, mode=mode, head=head, max_new_tokens=max_new_tokens, eos_token_ids=eos,
                                             drafter=drafter)
                    accepted, offered, lookup_steps = stats.accepted, stats.offered, stats.lookup_steps
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
    finally:
        counter.close()
    return Run(tokens, seconds, counter.count, memory.peak_bytes, accepted, offered, lookup_steps)


def _first_difference(a: list[int], b: list[int]) -> int:
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return min(len(a), len(b))


def _summary(mode: str, runs: list[Run], horizon: int) -> dict:
    totals = DecodeStats(mode)
    for run in runs:
        totals.add(len(run.tokens), run.forwards, run.seconds, run.accepted, run.offered, run.lookup_steps)
    row = {
        "new_tokens": totals.new_tokens,
        "seconds": totals.seconds,
        "tokens_per_second": totals.tokens_per_second,
        "ms_per_token": 1000 * totals.seconds / totals.new_tokens if totals.new_tokens else 0.0,
        "seconds_per_prompt": totals.seconds / len(runs) if runs else 0.0,
        "forwards": totals.forwards,
        "tokens_per_forward": totals.tokens_per_forward,
        "peak_memory_mb": max((run.peak_bytes for run in runs), default=0) / 2**20,
    }
    if mode == "verify":
        row["tau"] = totals.tau
        row["acceptance_by_position"] = totals.acceptance_by_position()
        row["drafts_per_step"] = horizon - 1  # the head's; a lookup step offers up to LOOKUP_TOKENS
        row["lookup_share"] = totals.lookup_steps / totals.steps if totals.steps else 0.0  # steps drafted by lookup
    return row


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
) -> dict:
    """Time every mode on every prompt (interleaved, after a warm-up) -> the result dict.
    `drafter`: where verify's drafts come from (tjdkit.decoding.drafters)."""
    modes = parse_modes(modes, BENCH_MODES, what="bench mode")
    if drafter not in DRAFTERS:
        raise TjdkitError(f"unknown drafter {drafter!r} (choose from {', '.join(DRAFTERS)})")
    needing_head = [mode for mode in modes if mode in NEEDS_HEAD and not (mode == "verify" and drafter == "lookup")]
    if head is None and needing_head:
        raise TjdkitError(f"{' and '.join(needing_head)} need a head")
    report = on_progress or (lambda _stage, _done, _total: None)
    eos = [tokenizer.eos_token_id]
    horizon = head.horizon if head is not None else 1

    for done, mode in enumerate(modes):
        report("warm-up", done, len(modes))
        _run_mode(model, head, mode, prompts[0], min(warmup_tokens, max_new_tokens), eos, drafter)
    report("warm-up", len(modes), len(modes))

    runs: dict[str, list[Run]] = {mode: [] for mode in modes}
    total = len(prompts) * len(modes)
    for index, prompt in enumerate(prompts):
        order = modes[index % len(modes) :] + modes[: index % len(modes)]  # rotate: no mode always goes first
        for position, mode in enumerate(order):
            runs[mode].append(_run_mode(model, head, mode, prompt, max_new_tokens, eos, drafter))
            report("bench", index * len(modes) + position + 1, total)

    result: dict = {"modes": {mode: _summary(mode, runs[mode], horizon) for mode in modes}}
    result["baselines"] = speedups(result["modes"])
    if "ar" in runs:
        result["parity"] = _parity(tokenizer, runs)
    result["per_prompt"] = [
        {mode: {"tokens": len(runs[mode][i].tokens), "seconds": runs[mode][i].seconds} for mode in modes}
        for i in range(len(prompts))
    ]
    result["outputs"] = {mode: [runs[mode][i].tokens for i in range(len(prompts))] for mode in modes}
    return result


def speedups(rows: dict[str, dict]) -> dict[str, str]:
    """Each mode's tokens/s over the strongest alternative a user has, in place -> which mode each
    ratio divides by. `speedup`: over the fastest plain lossless decoding in the run (tjdkit's
    `ar` or transformers' `hf`, whichever ran faster); `speedup_vs_lookup`: over transformers'
    prompt lookup, the lossless speed-up that needs no training."""
    baselines: dict[str, str] = {}
    plain = [mode for mode in PLAIN if mode in rows]
    if plain:
        baselines["speedup"] = max(plain, key=lambda mode: rows[mode]["tokens_per_second"])
    if "lookup" in rows:
        baselines["speedup_vs_lookup"] = "lookup"
    for key, mode in baselines.items():
        base = rows[mode]["tokens_per_second"]
        for row in rows.values():
            row[key] = row["tokens_per_second"] / base if base else 0.0
    return baselines


def _parity(tokenizer, runs: dict[str, list[Run]]) -> dict:
    """Per mode: do its outputs equal `ar`'s, prompt by prompt? Lossless modes must; draft need not."""
    parity: dict = {}
    for mode, mode_runs in runs.items():
        if mode == "ar":
            continue
        diffs = []
        for index, (ours, reference) in enumerate(zip(mode_runs, runs["ar"])):
            if ours.tokens != reference.tokens:
                at = _first_difference(ours.tokens, reference.tokens)
                diffs.append({
                    "prompt": index,
                    "first_difference": at,
                    "ar": tokenizer.decode(reference.tokens[max(at - 8, 0) : at + 8]),
                    mode: tokenizer.decode(ours.tokens[max(at - 8, 0) : at + 8]),
                })
        parity[mode] = {
            "identical": not diffs,
            "identical_prompts": len(mode_runs) - len(diffs),
            "lossless": mode in LOSSLESS,
            "diffs": diffs,
        }
    return parity

