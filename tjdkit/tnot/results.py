"""What a TNOT call returns: the response and one record per token. Its own module so that
both rule sets (tjdkit.tnot.generate, tjdkit.tnot.srgen) return the same types."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from torch import Tensor


@dataclass
class TokenRecord:
    position: int  # 0-based index in the response
    token: int
    entropy: float  # nats, of the distribution the token was first judged by (prompt delta applied)
    threshold: Optional[float]  # what it was compared with; None when entropy control is off
    reflected: bool = False
    entropy_after: Optional[float] = None  # after the reflection's delta
    forced_eos: bool = False  # the trigger fired with no retries left (or reflection off): EOS instead
    before: Optional[int] = None  # on a trigger: the most likely token before reflection / forced EOS

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TnotResult:
    tokens: list[int]
    records: list[TokenRecord]
    prompt_losses: list[float] = field(default_factory=list)  # prompt CE before each step, then after the last
    reflections: int = 0
    forced_eos: bool = False
    prompt_seconds: float = 0.0
    reflection_seconds: float = 0.0
    seconds: float = 0.0  # the whole call, prefill and prompt stage included (shared by a batch)
    forwards: int = 0  # backbone forwards of the call (shared by a batch)
    delta: Optional[Tensor] = None  # [D] the prompt stage's delta (None without one)

    @property
    def entropies(self) -> list[float]:
        return [record.entropy for record in self.records]

    @property
    def prompt_ce_before(self) -> Optional[float]:
        return self.prompt_losses[0] if self.prompt_losses else None

    @property
    def prompt_ce_after(self) -> Optional[float]:
        return self.prompt_losses[-1] if self.prompt_losses else None

    @property
    def changed_by_reflection(self) -> int:
        """Reflections that chose a different token from the one the model led with before."""
        return sum(r.reflected and r.before is not None and r.before != r.token for r in self.records)

    def summary(self) -> dict:
        """JSON-ready numbers, without the per-token records."""
        return {
            "new_tokens": len(self.tokens),
            "reflections": self.reflections,
            "reflections_changing_the_token": self.changed_by_reflection,
            "forced_eos": self.forced_eos,
            "prompt_ce_before": self.prompt_ce_before,
            "prompt_ce_after": self.prompt_ce_after,
            "prompt_seconds": self.prompt_seconds,
            "reflection_seconds": self.reflection_seconds,
            "seconds": self.seconds,
        }
