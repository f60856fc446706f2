"""`TnotConfig`: every TNOT setting in one typed place (also a recipe section, `tnot:`).

Defaults follow the published methods: SLOT's AdamW (lr 0.1, weight decay 1e-8, eps 1e-5)
on a delta added to the final hidden state, SRGen's entropy trigger (static 3.0, or
adaptive max(mean + K * max(std, 0.5), 1.8) over the last N = 20 entropies, K = 2) and
its reflection loss (1 - w) * CE(context) + w * entropy with w = 0.1, at most 5 times.
No torch here: the CLI validates a config before anything heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional



@dataclass
class TnotConfig:
    # AdamW steps on the prompt's delta, and on each reflection's fresh delta (0: no optimisation).
    steps: int = field(default=3, metadata={"min": 0})
    lr: float = field(default=0.1, metadata={"gt": 0.0})
    weight_decay: float = field(default=1e-8, metadata={"min": 0.0})
    eps: float = field(default=1e-5, metadata={"gt": 0.0})
    # Prompt stage (SLOT): fit a delta to the prompt's own next tokens and decode with it.
    optimize_prompt: bool = True
    # Entropy trigger on every generated token.
    entropy_control: bool = True
    entropy_threshold: float = field(default=3.0, metadata={"min": 0.0})
    # Adaptive: once `window` tokens are seen, max(mean + k * max(std, min_std), floor) over the
    # last `window` entropies (population std); before that, entropy_threshold.
    adaptive: bool = False
    window: int = field(default=20, metadata={"min": 1})
    k: float = field(default=2.0, metadata={"min": 0.0})
    min_std: float = field(default=0.5, metadata={"min": 0.0})
    floor: float = field(default=1.8, metadata={"min": 0.0})
    # Reflection (SRGen): a fresh delta for the triggering position, loss
    # (1 - entropy_weight) * CE(context) + entropy_weight * entropy(next token).
    # false: a triggering token ends the response at once (the published decorator's behaviour).
    reflect: bool = True
    entropy_weight: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    max_retries: int = field(default=5, metadata={"min": 0})
    # What a trigger does once the retries are spent: end the response (eos) or keep the token.
    on_exhausted: Literal["eos", "continue"] = "eos"
    # Cross-entropy covers at most this many of the most recent context tokens (memory: one
    # vocabulary-sized row of logits per token, 1 MB each on Gemma 3).
    context_window: int = field(default=1024, metadata={"min": 2})
    # Append one JSON line per generated token here (the seeds' record_entropy; the CLI has --record).
    record_path: Optional[str] = None

    def check(self) -> "TnotConfig":
        """Types and bounds as a recipe would check them, for configs built in Python or from the environment."""
        from tjdkit.recipes import from_mapping, to_mapping

        return from_mapping(TnotConfig, to_mapping(self), source="tnot config")
