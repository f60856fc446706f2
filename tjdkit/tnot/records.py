"""Entropy traces as JSON lines: one object per generated token."""

from __future__ import annotations

import json
from typing import Iterable, Optional


def token_pieces(tokenizer, tokens: list[int]) -> list[str]:
    """The text each token adds, so that "".join(pieces) is the decoded response.

    Decoded by growing prefixes, so multi-byte characters split over several tokens are
    given to the token that completes them (the others get "").
    """
    pieces, shown = [], ""
    for end in range(1, len(tokens) + 1):
        text = tokenizer.decode(tokens[:end], skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(shown):
            pieces.append("")  # an incomplete character: wait for the token that finishes it
            continue
        pieces.append(text[len(shown) :])
        shown = text
    return pieces


def record_lines(results, tokenizer=None, labels: Optional[Iterable] = None) -> list[str]:
    """JSON lines: prompt (its index or label), position, token, text, entropy, threshold, reflected, ..."""
    lines = []
    labels = list(labels) if labels is not None else list(range(len(results)))
    for label, result in zip(labels, results):
        pieces = token_pieces(tokenizer, result.tokens) if tokenizer is not None else [None] * len(result.records)
        for record, piece in zip(result.records, pieces):
            lines.append(json.dumps({"prompt": label, **record.to_dict(), "text": piece}, ensure_ascii=False))
    return lines
