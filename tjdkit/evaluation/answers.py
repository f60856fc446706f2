"""Scoring generated answers: the number after `####`, compared numerically; or, for a text
answer (a list of accepted spellings), the reply's first line."""

from __future__ import annotations

import math
import re
import unicodedata
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


def is_correct(generated: str, target, rel_tol: float = 1e-6, abs_tol: float = 1e-6) -> bool:
    """target: a number, or the accepted answers (list of strings) for a text answer."""
    if isinstance(target, (list, tuple)):
        return first_line_matches(generated, list(target))
    value = extract_answer(generated)
    return value is not None and math.isclose(value, float(target), rel_tol=rel_tol, abs_tol=abs_tol)


def normalise(text: str) -> str:
    """Case, accents, punctuation at the ends and inner spacing ignored: 'Bogotá.' == 'bogota'."""
    text = unicodedata.normalize("NFKD", text).replace("\u2019", "'")  # a typographic apostrophe is an apostrophe
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(text.lower().strip().strip(".!,;:\"'*").split())


def first_line_matches(reply: str, answers: list[str]) -> bool:
    """The reply's first non-empty line is one of the answers (normalised)."""
    line = next((line for line in reply.splitlines() if line.strip()), "")
    return normalise(line) in {normalise(answer) for answer in answers}
