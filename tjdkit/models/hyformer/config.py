"""HyformerConfig: the seed's field names, as a transformers config so Auto classes and caches work.

The fields and their checks live in modeling_hyformer.py (the file saved directories carry);
tjdkit's config adds only its JSON-file helpers."""

from __future__ import annotations

from pathlib import Path

from tjdkit.models.hyformer import modeling_hyformer
from tjdkit.models.hyformer.modeling_hyformer import POOLING, PredictionTaskType

__all__ = ["POOLING", "HyformerConfig", "PredictionTaskType"]


class HyformerConfig(modeling_hyformer.HyformerConfig):
    __doc__ = modeling_hyformer.HyformerConfig.__doc__

    @classmethod
    def from_json(cls, path: str | Path) -> "HyformerConfig":
        """A config from a JSON file holding (a subset of) the fields above."""
        return cls.from_json_file(str(path))

    def to_json(self, path: str | Path) -> Path:
        """Every field (not only those that differ from the defaults), written atomically."""
        from tjdkit.fileio import atomic_write_text

        return atomic_write_text(Path(path), self.to_json_string(use_diff=False))
