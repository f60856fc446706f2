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


class TailIndex:
    """`lookup_match` on a sequence that only grows, without scanning it: the first occurrence of
    every n-gram (n <= max_ngram) is kept as tokens arrive, so a step's lookup costs max_ngram
    dictionary reads instead of a scan of the whole context (on a 3300-token chat prompt the scan
    for 4-grams took 2 ms, a few percent of a verify step)."""

    def __init__(self, max_ngram: int = LOOKUP_NGRAM, tokens=()):
        self.max_ngram = max_ngram
        self.tokens: list[int] = []
        self.first: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_ngram + 1)]  # [n]: n-gram -> first start
        self.extend(tokens)

    def extend(self, tokens) -> None:
        start = len(self.tokens)
        self.tokens.extend(tokens)
        for n in range(1, self.max_ngram + 1):
            first = self.first[n]
            low = max(start - n + 1, 0)  # the n-grams that end at a new token start here
            window = self.tokens[low:]
            for offset, gram in enumerate(zip(*(window[i:] for i in range(n)))):
                first.setdefault(gram, low + offset)  # earlier starts come first: the first occurrence stays

    def match(self) -> tuple[int, int] | None:
        """What `lookup_match(self.tokens, self.max_ngram)` returns."""
        length = len(self.tokens)
        for n in range(min(self.max_ngram, length - 1), 0, -1):
            start = self.first[n].get(tuple(self.tokens[length - n :]))
            if start is not None and start < length - n:  # an earlier occurrence than the tail itself
                return n, start + n
        return None
