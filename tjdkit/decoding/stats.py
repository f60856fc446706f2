"""Decoding statistics: what one generation did, or many summed (`DecodeStats.add`). bench, eval
and chat report tau, acceptance by draft position and tokens per forward through this one
class, so each formula exists once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable


@dataclass
class DecodeStats:
    mode: str  # "ar", "draft", "verify" or "acceptance"
    new_tokens: int = 0
    forwards: int = 0  # model forward calls, the prefill included (acceptance: those verify would run)
    seconds: float = 0.0
    # draft: tokens kept per head call. verify / acceptance: drafts accepted per verify forward.
    accepted: list[int] = field(default_factory=list)
    # verify / acceptance: drafts offered per verify forward (H-1, fewer near max_new_tokens).
    offered: list[int] = field(default_factory=list)
    lookup_steps: int = 0  # verify: steps whose drafts came from prompt lookup, not the head (tree steps included)
    tree_steps: int = 0  # verify: steps that verified several branches as one token tree
    output_rows: int = 0  # verify: output-layer rows computed (rows past the first rejected draft are skipped)

    def add(self, new_tokens: int, forwards: int, seconds: float, accepted: Iterable[int] = (),
            offered: Iterable[int] = (), lookup_steps: int = 0, tree_steps: int = 0,
            output_rows: int = 0) -> "DecodeStats":
        """Sum another generation into these (bench and eval total a mode over many prompts)."""
        self.lookup_steps += lookup_steps
        self.tree_steps += tree_steps
        self.output_rows += output_rows
        self.new_tokens += new_tokens
        self.forwards += forwards
        self.seconds += seconds
        self.accepted += list(accepted)
        self.offered += list(offered)
        return self

    def merge(self, other: "DecodeStats") -> "DecodeStats":
        return self.add(other.new_tokens, other.forwards, other.seconds, other.accepted, other.offered, other.lookup_steps,
                        other.tree_steps, other.output_rows)

    @property
    def tokens_per_forward(self) -> float:
        """new_tokens / forwards, the prefill included: 1.0 for `ar`, about H for `draft`."""
        return self.new_tokens / self.forwards if self.forwards else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def steps(self) -> int:
        """Verify steps (or head calls, in draft mode)."""
        return len(self.accepted)

    @property
    def mean_accepted(self) -> float:
        return sum(self.accepted) / len(self.accepted) if self.accepted else 0.0

    @property
    def tau(self) -> float:
        """Mean tokens per verify forward (accepted drafts + the model's own token); 1.0 for `ar`."""
        if self.mode in ("verify", "acceptance"):
            return sum(a + 1 for a in self.accepted) / len(self.accepted) if self.accepted else 0.0
        return self.tokens_per_forward

    def acceptance_by_position(self) -> list[float]:
        """Per draft position j = 1..: the share of the drafts offered there that were accepted."""
        return acceptance_rates(self.accepted, self.offered)


def acceptance_rates(accepted: list[int], offered: list[int]) -> list[float]:
    """Draft j (1-based) is accepted in a step iff accepted >= j; it was offered iff offered >= j."""
    depth = max(offered, default=0)
    rates = []
    for j in range(1, depth + 1):
        tried = sum(o >= j for o in offered)
        rates.append(sum(a >= j for a, o in zip(accepted, offered) if o >= j) / tried if tried else 0.0)
    return rates
