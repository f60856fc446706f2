"""Typed recipe sections. Every recipe YAML validates into one of the `*Recipe` classes here.

Field metadata carries bounds (`min`, `max`, `gt`) that `tjdkit.recipes` checks, so a bad
value is reported with its key and file rather than failing deep inside the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

DType = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass
class ModelSection:
    name: str = "gemma3"
    dtype: DType = "auto"
    device: str = "auto"


@dataclass
class GenerationSection:
    max_new_tokens: int = field(default=256, metadata={"min": 1})
    # 0 means greedy decoding.
    temperature: float = field(default=0.7, metadata={"min": 0.0})
    top_k: int = field(default=64, metadata={"min": 0})
    top_p: float = field(default=0.95, metadata={"gt": 0.0, "max": 1.0})
    repetition_penalty: float = field(default=1.0, metadata={"gt": 0.0})
    seed: Optional[int] = None


ChatFormat = Literal["auto", "template", "gemma", "raw"]


@dataclass
class ChatSection:
    system: Optional[str] = None
    # auto: the tokenizer's chat template; else raw for models registered as pretrained
    # (gemma3-270m); else Gemma's turn format. raw: plain continuation, no turns, no history.
    format: ChatFormat = "auto"


@dataclass
class ChatRecipe:
    command: ClassVar[str] = "chat"
    description: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    generation: GenerationSection = field(default_factory=GenerationSection)
    chat: ChatSection = field(default_factory=ChatSection)
