"""gsm8k: grade-school maths word problems from the Hugging Face hub (`openai/gsm8k`, config "main").

The only dataset that needs the network. Offline it fails in seconds with one line that
points to the datasets that work offline.
"""

from __future__ import annotations

import os
import random
from typing import Optional

from tjdkit.data.splits import check_split
from tjdkit.errors import TjdkitError

HUB_NAME, CONFIG = "openai/gsm8k", "main"
SPLITS = {"train": "train", "eval": "test", "test": "test"}
OFFLINE = "gsm8k needs the Hugging Face hub ({name}), which is unreachable (offline); stemp and sharegpt work offline"


def gsm8k_target(answer: str) -> Optional[float]:
    """The number after the last `####` (commas removed), or None when there is none."""
    if "####" not in answer:
        return None
    number = answer.rsplit("####", 1)[1].strip().replace(",", "").replace("$", "")
    try:
        return float(number)
    except ValueError:
        return None


def gsm8k_row(question: str, answer: str) -> dict:
    prompt, completion = f"Question: {question}\nAnswer:", " " + answer
    return {"prompt": prompt, "answer": completion, "text": prompt + completion, "target": gsm8k_target(answer)}


def _offline() -> bool:
    from tjdkit.fileio import hub_reachable

    if os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    return not hub_reachable()


def gsm8k_rows(split: str, size: Optional[int] = None, seed: int = 0) -> list[dict]:
    """Rows with prompt, answer, text and target; `seed` shuffles the split, then `size` truncates it."""
    check_split("gsm8k", split, SPLITS)
    if size is not None and size < 0:
        raise TjdkitError(f"size must be >= 0, got {size}")
    message = OFFLINE.format(name=HUB_NAME)
    if _offline():
        raise TjdkitError(message)
    try:
        from datasets import load_dataset

        data = load_dataset(HUB_NAME, CONFIG, split=SPLITS[split])
    except Exception as exc:  # any hub, network or cache failure reads as "unreachable"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TjdkitError(f"{message}: {reason}") from exc
    rows = [gsm8k_row(example["question"], example["answer"]) for example in data]
    random.Random(seed).shuffle(rows)
    return rows if size is None else rows[:size]
