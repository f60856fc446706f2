"""Scoring generated answers: the number after `####`, compared numerically."""

from __future__ import annotations

import math
import re
from typing import Optional

_ANSWER = re.compile(r"####\s*([-+]?\$?\s*[\d,]*\.?\d+(?:[eE][-+]?\d+)?)")


def extract_answer(text: str) -> Optional[float]:
    """The first number after `####` (GSM8K and stemp style), or None when there is none."""
    match = _ANSWER.search(text)
    if match is None:
        return None
    digits = match.group(1).replace(",", "").replace("$", "").replace(" ", "")
    try:
        return float(digits)
    except ValueError:
        return None


def is_correct(generated: str, target: float, rel_tol: float = 1e-6, abs_tol: float = 1e-6) -> bool:
    value = extract_answer(generated)
    return value is not None and math.isclose(value, float(target), rel_tol=rel_tol, abs_tol=abs_tol)
