"""Where verify's drafts come from: the joint head, prompt lookup (the n-gram copy transformers
ships, which needs no training and wins when the model repeats its context), or both.

`lookup_drafts` is transformers' PromptLookupCandidateGenerator rule, written over a token list
so tjdkit's own KV-cached loop can use it: the last n tokens (n = max_ngram .. 1) are looked up
in the sequence, and the tokens after their first earlier occurrence are the drafts.
"""

from __future__ import annotations

DRAFTERS = ("hybrid", "head", "lookup")  # hybrid: lookup where the context repeats, the head elsewhere
LOOKUP_NGRAM = 2  # transformers' default max_matching_ngram_size
LOOKUP_TOKENS = 10  # transformers' documented default for prompt_lookup_num_tokens (bench's `lookup` baseline)
VERIFY_NGRAM = 4  # verify's own copies match tails of up to 4 tokens (held-out prose: +5-10% tokens per forward over 2; chat and code level)
MAX_LOOKUP_TOKENS = 31  # verify's own lookup drafts: up to this many, as the measured forward costs say pay


def lookup_drafts(tokens: list[int], limit: int = LOOKUP_TOKENS, max_ngram: int = LOOKUP_NGRAM) -> list[int]:
    """Up to `limit` tokens that followed the first earlier occurrence of the sequence's last
    n-gram (the longest n <= max_ngram that occurs earlier); [] when none does."""
    match = lookup_match(tokens, max_ngram)
    return tokens[match[1] : match[1] + limit] if match and limit > 0 else []


def lookup_match(tokens: list[int], max_ngram: int = LOOKUP_NGRAM) -> tuple[int, int] | None:
    """(n, where the copy starts): the longest n <= max_ngram whose last n tokens occurred earlier,
    and the position after their first earlier occurrence; None when no n does. verify tracks
    acceptance per n: a copy after two matching tokens holds far more often than after one."""
    length = len(tokens)
    for n in range(min(max_ngram, length - 1), 0, -1):
        tail = tokens[length - n :]
        for start in range(length - n):  # an occurrence that ends before the tail starts or overlaps it
            if tokens[start : start + n] == tail:
                return n, start + n  # start + n < length: a token always follows
    return None
