"""Tokenised examples for heads: ids, where the answer starts, and the numeric target if any."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch

from tjdkit.config import DataSection


@dataclass
class Example:
    input_ids: list[int]
    prompt_length: int  # tokens before the answer starts
    target: Optional[float] = None


def load_examples(data: DataSection, tokenizer, split: str) -> list[Example]:
    """The dataset's rows tokenised (prompt with BOS, answer, EOS) and cut to max_length."""
    from tjdkit.data.sources import dataset_rows

    size = data.train_size if split == "train" else data.eval_size
    examples = []
    bos = tokenizer.bos_token
    for row in dataset_rows(data.dataset, split, size, data.seed, tokenizer):
        # Chat-template renderings already start with BOS; plain prompts get it from the tokenizer.
        has_bos = bool(bos) and row["prompt"].startswith(bos)
        prompt_ids = tokenizer(row["prompt"], add_special_tokens=not has_bos).input_ids
        answer_ids = tokenizer(row["answer"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        ids = (prompt_ids + answer_ids)[: data.max_length]
        examples.append(Example(ids, min(len(prompt_ids), len(ids)), row["target"]))
    return examples


def collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, T], attention mask [B, T], answer start - 1 [B]."""
    width = max(len(example.input_ids) for example in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
        mask[row, : len(example.input_ids)] = 1
    first = torch.tensor([max(example.prompt_length - 1, 0) for example in examples])
    return ids, mask, first


def frequent_token_ids(examples: list[Example], k: int, always: list[int]) -> torch.Tensor:
    """The k most frequent tokens of the training data (ties by id), always including `always`."""
    counts = Counter(token for example in examples for token in example.input_ids)
    ranked = [token for token, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    chosen = list(dict.fromkeys([*always, *ranked]))[:k]
    used = set(chosen)
    filler = (token for token in range(k * 4 + max(chosen, default=0) + 1) if token not in used)
    while len(chosen) < k:  # tiny datasets: pad with unused ids so the subset has k entries
        chosen.append(next(filler))
    return torch.tensor(sorted(chosen), dtype=torch.long)


def self_distill(
    model,
    tokenizer,
    examples: list[Example],
    batch_size: int = 16,
    on_progress: Optional[Callable[[int, int], None]] = None,
    new_tokens: Optional[int] = None,
    max_length: Optional[int] = None,
) -> list[Example]:
    """Replace each answer by the model's own greedy continuation of the prompt.

    A head trained on the model's own outputs drafts what the verifier would have chosen,
    which is what acceptance in verified decoding rewards. Each continuation may run to
    `new_tokens` (default: the length the original answer had), within `max_length` in all.
    Repeated prompts are generated once.
    """
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos

    def budget(example: Example) -> int:
        wanted = new_tokens if new_tokens is not None else len(example.input_ids) - example.prompt_length
        room = max_length - example.prompt_length if max_length is not None else wanted
        return max(min(wanted, room), 0)

    distinct: dict[tuple[int, ...], int] = {}  # prompt -> the largest budget asked for it
    for example in examples:
        prompt = tuple(example.input_ids[: example.prompt_length])
        distinct[prompt] = max(distinct.get(prompt, 0), budget(example))
    prompts = list(distinct)
    continuations: dict[tuple[int, ...], list[int]] = {}
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            width = max(len(prompt) for prompt in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)  # left padding for generation
            mask = torch.zeros_like(ids)
            for row, prompt in enumerate(chunk):
                ids[row, width - len(prompt) :] = torch.tensor(prompt)
                mask[row, width - len(prompt) :] = 1
            generated = model.generate(
                input_ids=ids.to(model.device),
                attention_mask=mask.to(model.device),
                max_new_tokens=max(max(distinct[prompt] for prompt in chunk), 1),
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=pad,
            )[:, width:].tolist()
            for prompt, continuation in zip(chunk, generated):
                if eos in continuation:
                    continuation = continuation[: continuation.index(eos) + 1]
                continuations[prompt] = continuation
            if on_progress:
                on_progress(min(start + batch_size, len(prompts)), len(prompts))
    out = []
    for example in examples:
        prompt = example.input_ids[: example.prompt_length]
        out.append(replace(example, input_ids=prompt + continuations[tuple(prompt)][: budget(example)]))
    return out
