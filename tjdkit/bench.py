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

import os
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from tjdkit.errors import TjdkitError

BENCH_MODES = ("ar", "hf", "draft", "verify", "lookup")
DEFAULT_MODES = ("ar", "hf", "draft", "verify", "lookup")
LOSSLESS = ("hf", "verify", "lookup")  # greedy output must equal `ar`'s
NEEDS_HEAD = ("draft", "verify")
LOOKUP_TOKENS = 10  # transformers' documented default for prompt_lookup_num_tokens

ProgressCallback = Optional[Callable[[str, int, int], None]]


# ---- the head to benchmark ----------------------------------------------------------------


def head_cache_dir(model: str, head: str, rank: int, horizon: int, dataset: str) -> Path:
    """One directory per key; model paths and hub ids (slashes) become one safe name."""
    import re

    from tjdkit.models.cache import cache_root

    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_.") or "model"
    return cache_root() / "heads" / f"{safe}-{head}-r{rank}-h{horizon}-{dataset}"


def bench_recipe(dataset: str, model: str, head: str, rank: int, horizon: int):
    """The recipe bench trains with: `bench-<dataset>` (self-distilled, so drafts match what
    the model would write) with the model and head structure asked for."""
    from tjdkit.config import TrainRecipe
    from tjdkit.recipes import find_recipe, load_recipe

    name = f"bench-{dataset}"
    try:
        find_recipe(name)
    except TjdkitError:
        raise TjdkitError(
            f"no bench recipe for dataset '{dataset}' (bench-stemp, bench-sharegpt ship with tjdkit): "
            f"train a head with `tjdkit train` and pass --head-dir"
        ) from None
    flags = {"model.name": model, "head.name": head, "head.rank": rank, "head.horizon": horizon}
    return load_recipe(name, TrainRecipe, (), flags)


def resolve_head_run(
    model: str,
    head: str,
    rank: int,
    horizon: int,
    dataset: str,
    loaded=None,
    on_event: Optional[Callable[[dict], None]] = None,
) -> tuple[Path, bool]:
    """The cached run for (model, head, rank, horizon, dataset) -> (run dir, trained now).

    Trains it with the bench recipe when missing. Training happens in a sibling
    `.training` directory that becomes the cache entry only when training has finished, so
    an interrupted run is never mistaken for a finished head: the next call resumes it.
    """
    from tjdkit.runs import has_trainer_state, is_run
    from tjdkit.train import train

    if horizon < 2:
        raise TjdkitError(f"bench needs a head with horizon >= 2 to draft anything, got {horizon}")
    final = head_cache_dir(model, head, rank, horizon, dataset)
    if is_run(final):
        return final, False
    recipe = bench_recipe(dataset, model, head, rank, horizon)
    partial = final.with_name(final.name + ".training")
    model_obj, tokenizer = loaded if loaded is not None else (None, None)
    resume = has_trainer_state(partial / "last")
    if partial.exists() and not resume:  # killed before its first last/, or an older tjdkit's pickled state: start over
        import shutil

        shutil.rmtree(partial)
    train(recipe, partial, model_obj, tokenizer, resume=resume, on_event=on_event)
    if final.exists():  # another process finished first: keep theirs
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
    else:
        os.replace(partial, final)
    return final, True


# ---- prompts ------------------------------------------------------------------------------


def bench_prompts(tokenizer, dataset: str, split: str, count: int, seed: int = 0) -> list[list[int]]:
    """The first `count` prompts of the split, tokenised as training saw them."""
    from tjdkit.config import DataSection
    from tjdkit.data.examples import load_examples

    examples = load_examples(DataSection(dataset=dataset, eval_size=count, max_length=4096, seed=seed), tokenizer, split)
    if not examples:
        raise TjdkitError(f"no prompts in {dataset}/{split}")
    return [example.input_ids[: example.prompt_length] for example in examples[:count]]


# ---- measuring ----------------------------------------------------------------------------


class PeakMemory:
    """Peak memory while a block runs: CUDA's allocator peak on a GPU, else the process's
    resident set size sampled every few milliseconds (Linux), else its lifetime peak."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            import resource

            scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_bytes = max(self.peak_bytes, self._rss())

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_bytes = self._rss()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self._rss())


class ForwardCounter:
    """Counts the backbone's forward calls, whoever makes them (tjdkit or transformers' generate)."""

    def __init__(self, model):
        self.count = 0
        self._handle = model.base_model.register_forward_pre_hook(self._hook)

    def _hook(self, *_args) -> None:
        self.count += 1

    def close(self) -> None:
        self._handle.remove()


@dataclass
class Run:
    """One mode on one prompt."""

    tokens: list[int]
    seconds: float
    forwards: int
    peak_bytes: int
    accepted: list[int] = field(default_factory=list)
    offered: list[int] = field(default_factory=list)


def _run_mode(model, head, mode: str, prompt: list[int], max_new_tokens: int, eos: list[int]) -> Run:
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
                    tokens, stats = generate(model, ids, mode=mode, head=head, max_new_tokens=max_new_tokens, eos_token_ids=eos)
                    accepted, offered = stats.accepted, stats.offered
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
    finally:
        counter.close()
    return Run(tokens, seconds, counter.count, memory.peak_bytes, accepted, offered)


def _first_difference(a: list[int], b: list[int]) -> int:
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return min(len(a), len(b))


def _summary(mode: str, runs: list[Run], horizon: int) -> dict:
    from tjdkit.decoding import acceptance_rates

    tokens = sum(len(run.tokens) for run in runs)
    seconds = sum(run.seconds for run in runs)
    forwards = sum(run.forwards for run in runs)
    row = {
        "new_tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
        "ms_per_token": 1000 * seconds / tokens if tokens else 0.0,
        "seconds_per_prompt": seconds / len(runs) if runs else 0.0,
        "forwards": forwards,
        "tokens_per_forward": tokens / forwards if forwards else 0.0,
        "peak_memory_mb": max((run.peak_bytes for run in runs), default=0) / 2**20,
    }
    if mode == "verify":
        accepted = [a for run in runs for a in run.accepted]
        offered = [o for run in runs for o in run.offered]
        row["tau"] = sum(a + 1 for a in accepted) / len(accepted) if accepted else 0.0
        row["acceptance_by_position"] = acceptance_rates(accepted, offered)
        row["drafts_per_step"] = horizon - 1
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
) -> dict:
    """Time every mode on every prompt (interleaved, after a warm-up) -> the result dict."""
    unknown = [mode for mode in modes if mode not in BENCH_MODES]
    if unknown or not modes:
        raise TjdkitError(f"unknown bench mode '{','.join(unknown) or ''}' (use {', '.join(BENCH_MODES)})")
    if head is None and any(mode in NEEDS_HEAD for mode in modes):
        raise TjdkitError("draft and verify modes need a head")
    report = on_progress or (lambda _stage, _done, _total: None)
    eos = [tokenizer.eos_token_id]
    horizon = head.horizon if head is not None else 1

    for done, mode in enumerate(modes):
        report("warm-up", done, len(modes))
        _run_mode(model, head, mode, prompts[0], min(warmup_tokens, max_new_tokens), eos)
    report("warm-up", len(modes), len(modes))

    runs: dict[str, list[Run]] = {mode: [] for mode in modes}
    total = len(prompts) * len(modes)
    for index, prompt in enumerate(prompts):
        order = modes[index % len(modes) :] + modes[: index % len(modes)]  # rotate: no mode always goes first
        for position, mode in enumerate(order):
            runs[mode].append(_run_mode(model, head, mode, prompt, max_new_tokens, eos))
            report("bench", index * len(modes) + position + 1, total)

    result: dict = {"modes": {mode: _summary(mode, runs[mode], horizon) for mode in modes}}
    if "ar" in runs:
        base = result["modes"]["ar"]["tokens_per_second"]
        for row in result["modes"].values():
            row["speedup"] = row["tokens_per_second"] / base if base else 0.0
        result["parity"] = _parity(tokenizer, runs)
    result["per_prompt"] = [
        {mode: {"tokens": len(runs[mode][i].tokens), "seconds": runs[mode][i].seconds} for mode in modes}
        for i in range(len(prompts))
    ]
    result["outputs"] = {mode: [runs[mode][i].tokens for i in range(len(prompts))] for mode in modes}
    return result


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


def environment(model) -> dict:
    """What the numbers were measured on."""
    import transformers

    device = next(model.parameters()).device
    info = {
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


__all__ = [
    "BENCH_MODES",
    "DEFAULT_MODES",
    "bench_prompts",
    "bench_recipe",
    "environment",
    "head_cache_dir",
    "resolve_head_run",
    "run_bench",
]
