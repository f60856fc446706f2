"""stemp: TJDNet's synthetic Celsius-to-Fahrenheit task, the CPU sanity check for joint heads.

Every answer has the same step-by-step shape and ends in `####\\n{F}`, so a model that
learns it reaches ~100% accuracy and a joint head sees long, highly predictable spans.
Temperatures are drawn from N(20, 2) for training; the mild and hard test sets shift the
mean to 25 and 30 to measure generalisation.
"""

from __future__ import annotations

import random
from typing import Optional

SPLITS = {"train": (20.0, 10_000), "eval": (20.0, 100), "test": (20.0, 100), "mild": (25.0, 100), "hard": (30.0, 100)}
# Different streams per split so that eval/test never mirror train's draws.
_SPLIT_OFFSET = {"train": 0, "eval": 1, "test": 2, "mild": 3, "hard": 4}
STD = 2.0
LOW, HIGH = -40, 80


def fahrenheit(celsius: int) -> float:
    return celsius * 9 / 5 + 32


def format_number(value: float) -> str:
    """68 not 68.0; 17.6 not 17.600000000000001."""
    return f"{round(value, 4):g}"


def render_prompt(celsius: int) -> str:
    return f"[QUESTION]\nWhat is {celsius}°C in Fahrenheit?\n[ANSWER]"


def render_answer(celsius: int) -> str:
    f = format_number(fahrenheit(celsius))
    return (
        "\nLet's solve this step by step:\n"
        "1) To convert Celsius to Fahrenheit, use the formula: °F = (°C x 9/5) + 32\n"
        f"2) Plugging in {celsius}°C:\n"
        f"   °F = ({celsius} x 9/5) + 32\n"
        f"   °F = {f}\n\n####\n{f}"
    )


def sample_celsius(rng: random.Random, mean: float) -> int:
    return max(LOW, min(HIGH, int(rng.gauss(mean, STD))))


def stemp_rows(split: str, size: Optional[int] = None, seed: int = 0) -> list[dict]:
    """Rows with prompt, answer (the completion), text (both) and the numeric target."""
    mean, default_size = SPLITS[split]
    rng = random.Random(seed * 1000 + _SPLIT_OFFSET[split])
    rows = []
    for _ in range(default_size if size is None else size):
        celsius = sample_celsius(rng, mean)
        prompt, answer = render_prompt(celsius), render_answer(celsius)
        rows.append({"prompt": prompt, "answer": answer, "text": prompt + answer, "target": fahrenheit(celsius)})
    return rows


def stemp_dataset(split: str, size: Optional[int] = None, seed: int = 0):
    """The split as a `datasets.Dataset`."""
    from datasets import Dataset

    return Dataset.from_list(stemp_rows(split, size, seed))
