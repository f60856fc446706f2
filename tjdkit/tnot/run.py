"""Running TNOT over prompts or a dataset, optionally beside the plain model: what `tjdkit tnot` reports.

The plain model is `tjdkit.decoding.generate` (KV-cached, one forward per token), the
same per-token work TNOT does, so latency differences are TNOT's own. With `compare`,
both run on every prompt in one process after a warm-up, rotating which goes first. A
sweep runs several TNOT settings the same way, beside one plain run per prompt. Accuracy
differences come with a paired-bootstrap interval over the prompts (tjdkit.evaluation.paired).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from tjdkit.config import GenerationSection, PromptsSection
from tjdkit.decoding import Sampling, generate
from tjdkit.errors import TjdkitError
from tjdkit.evaluation.answers import is_correct
from tjdkit.evaluation.paired import paired_bootstrap
from tjdkit.tnot.config import TnotConfig
from tjdkit.tnot.generate import TnotResult, TokenRecord, tnot_generate


@dataclass
class PromptItem:
    label: str  # the prompt as the user wrote it (or the dataset's prompt)
    ids: list[int]  # what the model sees, chat template and special tokens included
    target: Optional[float | list[str]] = None  # the answer (a number, or accepted texts), for datasets that have one


@dataclass
class PromptRun:
    item: PromptItem
    tnot: TnotResult
    text: str
    correct: Optional[bool] = None
    plain_tokens: Optional[list[int]] = None
    plain_text: Optional[str] = None
    plain_seconds: Optional[float] = None
    plain_correct: Optional[bool] = None

    def to_dict(self) -> dict:
        out = {"prompt": self.item.label, "target": self.item.target, "response": self.text, "correct": self.correct,
               **self.tnot.summary()}
        if self.plain_tokens is not None:
            out["plain"] = {"response": self.plain_text, "correct": self.plain_correct,
                            "new_tokens": len(self.plain_tokens), "seconds": self.plain_seconds}
        return out


@dataclass
class TnotRun:
    runs: list[PromptRun] = field(default_factory=list)

    def rows(self) -> list[dict]:
        """One row per mode (plain when compared, then tnot) with accuracy and latency."""
        rows = []
        plain = [r for r in self.runs if r.plain_tokens is not None]
        plain_seconds = sum(r.plain_seconds for r in plain)
        if plain:
            rows.append(_row("plain", [len(r.plain_tokens) for r in plain], plain_seconds,
                             [r.plain_correct for r in plain], None))
        row = _row("tnot", [len(r.tnot.tokens) for r in self.runs], sum(r.tnot.seconds for r in self.runs),
                   [r.correct for r in self.runs], plain_seconds if plain else None)
        row["reflections"] = sum(r.tnot.reflections for r in self.runs)
        row["forced_ends"] = sum(r.tnot.forced_eos for r in self.runs)
        before = [r.tnot.prompt_ce_before for r in self.runs if r.tnot.prompt_losses]
        after = [r.tnot.prompt_ce_after for r in self.runs if r.tnot.prompt_losses]
        row["prompt_ce_before"] = sum(before) / len(before) if before else None
        row["prompt_ce_after"] = sum(after) / len(after) if after else None
        pairs = [(r.plain_correct, r.correct) for r in plain if r.plain_correct is not None and r.correct is not None]
        row["difference"] = paired_bootstrap(*zip(*pairs)).to_dict() if pairs else None  # tnot - plain accuracy
        rows.append(row)
        return rows

    def to_dict(self) -> dict:
        return {"summary": self.rows(), "prompts": [run.to_dict() for run in self.runs]}


def _row(mode: str, tokens: list[int], seconds: float, correct: list[Optional[bool]], plain_seconds) -> dict:
    scored = [c for c in correct if c is not None]
    total = sum(tokens)
    return {
        "mode": mode,
        "prompts": len(tokens),
        "accuracy": sum(scored) / len(scored) if scored else None,
        "new_tokens": total,
        "seconds": seconds,
        "seconds_per_prompt": seconds / len(tokens) if tokens else 0.0,
        "ms_per_token": 1000 * seconds / total if total else 0.0,
        "tokens_per_second": total / seconds if seconds > 0 else 0.0,
        "latency_ratio": seconds / plain_seconds if plain_seconds else None,
        "reflections": None,
        "forced_ends": None,
        "prompt_ce_before": None,
        "prompt_ce_after": None,
        "difference": None,
    }


def prompt_items(tokenizer, texts: list[str], prompts: PromptsSection, model_name: Optional[str] = None) -> list[PromptItem]:
    """Typed prompts wrapped as `prompts.format` says (as chat would), or the dataset's prompts."""
    if texts:
        from tjdkit.models.prompts import render_prompt, resolve_format

        chat_format = resolve_format(prompts.format, tokenizer, model_name)
        items = []
        for text in texts:
            if not text.strip():
                raise TjdkitError("empty prompt")
            if chat_format == "raw":
                ids = tokenizer(text).input_ids
            else:
                rendered = render_prompt(tokenizer, [{"role": "user", "content": text}], chat_format)
                ids = tokenizer(rendered, add_special_tokens=False).input_ids
            items.append(PromptItem(text, ids))
        return items
    if prompts.dataset is None:
        raise TjdkitError("give a prompt (tjdkit tnot \"What is 3 C in F?\") or --dataset capitals|stemp|gsm8k")
    from tjdkit.data.sources import dataset_rows

    rows = dataset_rows(prompts.dataset, prompts.split, prompts.limit, prompts.seed)
    return [PromptItem(row["prompt"], tokenizer(row["prompt"]).input_ids, row["target"]) for row in rows]


def run_prompts(
    model,
    tokenizer,
    items: list[PromptItem],
    config: TnotConfig,
    generation: GenerationSection,
    *,
    compare: bool = False,
    eos_token_ids: Optional[list[int]] = None,
    on_token: Optional[Callable[[int, TokenRecord], None]] = None,
    on_done: Optional[Callable[[int, PromptRun], None]] = None,
) -> TnotRun:
    """TNOT on every prompt (batch size 1, so each prompt's latency is its own), and the plain model with `compare`."""
    return run_settings(model, tokenizer, items, {"tnot": config}, generation, compare=compare, eos_token_ids=eos_token_ids,
                        on_token=on_token, on_done=on_done)["tnot"]


def run_settings(
    model,
    tokenizer,
    items: list[PromptItem],
    configs: dict[str, TnotConfig],
    generation: GenerationSection,
    *,
    compare: bool = False,
    eos_token_ids: Optional[list[int]] = None,
    on_token: Optional[Callable[[int, TokenRecord], None]] = None,
    on_done: Optional[Callable[[int, PromptRun], None]] = None,
) -> dict[str, TnotRun]:
    """Every TNOT setting (by label) on every prompt, and with `compare` the plain model once per
    prompt, shared by all settings. Per prompt the runs rotate which goes first, so drift in
    machine speed falls on all of them. `on_token` sees the first setting's tokens; `on_done`
    its result once every run of the prompt is done."""
    sampling = Sampling.from_generation(generation)
    eos = eos_token_ids if eos_token_ids is not None else [tokenizer.eos_token_id]
    device = next(model.parameters()).device
    first = next(iter(configs))

    def generator(index: int):  # every run of a prompt draws the same random numbers (paired comparisons)
        return torch.Generator().manual_seed((generation.seed + index) % 2**63) if generation.seed is not None else None

    def plain(ids: torch.Tensor, limit: int, index: int = 0):
        return generate(model, ids, mode="ar", max_new_tokens=limit, eos_token_ids=eos, temperature=generation.temperature,
                        top_k=sampling.top_k, top_p=sampling.top_p, repetition_penalty=sampling.repetition_penalty,
                        generator=generator(index))

    def tnot(label: str, ids: torch.Tensor, limit: int, index: int = 0) -> TnotResult:
        report = None
        if on_token is not None and label == first:
            report = lambda _row, record: on_token(index, record)  # noqa: E731
        return tnot_generate(model, ids, config=configs[label], max_new_tokens=limit, eos_token_ids=eos, sampling=sampling,
                             generator=generator(index), on_token=report)[0]

    if compare and items:  # warm-up: the first calls pay for allocations the others reuse
        ids = torch.tensor([items[0].ids], device=device)
        plain(ids, 4)
        tnot(first, ids, 4)
    results = {label: TnotRun() for label in configs}
    for index, item in enumerate(items):
        ids = torch.tensor([item.ids], device=device)
        order = (["plain"] if compare else []) + list(configs)
        shift = index % len(order)
        outcomes = {}
        for label in order[shift:] + order[:shift]:
            limit = generation.max_new_tokens
            outcomes[label] = plain(ids, limit, index) if label == "plain" else tnot(label, ids, limit, index)
        for label in configs:
            outcome = outcomes[label]
            text = tokenizer.decode(outcome.tokens, skip_special_tokens=True)
            run = PromptRun(item, outcome, text, _score(text, item.target))
            if compare:
                tokens, stats = outcomes["plain"]
                run.plain_tokens, run.plain_seconds = tokens, stats.seconds
                run.plain_text = tokenizer.decode(tokens, skip_special_tokens=True)
                run.plain_correct = _score(run.plain_text, item.target)
            results[label].runs.append(run)
        if on_done is not None:
            on_done(index, results[first].runs[-1])
    return results


def sweep_configs(recipe) -> dict[str, TnotConfig]:
    """{label: TnotConfig}: the recipe's `tnot` section, then one setting per `sweep` entry (that
    section with the entry's keys changed), each checked as a recipe's `tnot` section would be."""
    from tjdkit.recipes import from_mapping, to_mapping

    settings = {"tnot": recipe.tnot}
    for index, change in enumerate(recipe.sweep):
        if not change:
            raise TjdkitError(f"sweep[{index}] changes nothing: give the tnot keys it sets, e.g. {{steps: 1}}")
        label = "tnot " + ", ".join(f"{key}={value}" for key, value in change.items())
        settings[label] = from_mapping(TnotConfig, {**to_mapping(recipe.tnot), **change}, source=f"sweep[{index}]")
    return settings


def sweep_rows(results: dict[str, TnotRun]) -> list[dict]:
    """One table for a sweep: the plain row (once), then each setting's TNOT row, labelled."""
    rows = []
    for label, result in results.items():
        summary = result.rows()
        if not rows and summary[0]["mode"] == "plain":
            rows.append(summary[0])
        rows.append({**summary[-1], "mode": label})
    return rows


def _score(text: str, target: Optional[float | list[str]]) -> Optional[bool]:
    return None if target is None else is_correct(text, target)
