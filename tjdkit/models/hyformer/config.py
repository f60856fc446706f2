"""HyformerConfig: the seed's field names, as a transformers config so Auto classes and caches work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

from transformers import PreTrainedConfig

PredictionTaskType = Literal["classification", "regression", "multilabel"]
POOLING = ("first", "mean")


class HyformerConfig(PreTrainedConfig):
    """One transformer, two attention modes: causal for `lm`, bidirectional for `mlm` and `prediction`.

    `prediction_mean` / `prediction_std` hold the training targets' scale for regression:
    the prediction head learns standardised targets (so its loss weighs like the others in
    joint training) and `extras["predictions"]` gives values back in the data's units.
    """

    model_type = "hyformer"
    # The names the rest of transformers and tjdkit read (caches, heads, generation).
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "max_position_embeddings": "max_seq_len",
        "rms_norm_eps": "eps",
    }

    vocab_size: int = 32000
    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 6
    max_seq_len: int = 128
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    eps: float = 1e-6
    num_prediction_tasks: Optional[int] = None
    prediction_task_type: PredictionTaskType = "classification"
    # null: the SwiGLU rule 8/3 * d_model, rounded up to a multiple of 64.
    intermediate_size: Optional[int] = None
    rope_theta: float = 10000.0
    # Which hidden state a prediction reads: the task token's (first) or the mean over real tokens.
    pooling: str = "first"
    prediction_dropout: float = 0.0
    prediction_mean: Optional[list] = None
    prediction_std: Optional[list] = None
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: Optional[int] = None
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    mask_token_id: Optional[int] = None

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None:
            self.intermediate_size = -(-8 * self.d_model // 3 // 64) * 64
        super().__post_init__(**kwargs)
        self.check()

    def check(self) -> None:
        """Reject shapes the model cannot build, with the field's name (ValueError, as transformers does)."""
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "max_seq_len", "intermediate_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HyformerConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"HyformerConfig: d_model ({self.d_model}) must split into n_heads ({self.n_heads}) heads of even size (RoPE)"
            )
        for name in ("attn_dropout", "resid_dropout", "prediction_dropout"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ValueError(f"HyformerConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.num_prediction_tasks is not None and self.num_prediction_tasks < 1:
            raise ValueError(f"HyformerConfig.num_prediction_tasks must be >= 1 or null, got {self.num_prediction_tasks!r}")
        if self.prediction_task_type not in ("classification", "regression", "multilabel"):
            raise ValueError(
                "HyformerConfig.prediction_task_type must be classification, regression or multilabel, "
                f"got {self.prediction_task_type!r}"
            )
        if self.pooling not in POOLING:
            raise ValueError(f"HyformerConfig.pooling must be one of {', '.join(POOLING)}, got {self.pooling!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_json(cls, path: str | Path) -> "HyformerConfig":
        """A config from a JSON file holding (a subset of) the fields above."""
        return cls.from_json_file(str(path))

    def to_json(self, path: str | Path) -> Path:
        """Every field (not only those that differ from the defaults), written atomically."""
        from tjdkit.fileio import atomic_write_text

        return atomic_write_text(Path(path), self.to_json_string(use_diff=False))

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        return json.loads(json.dumps(data, default=str))  # plain JSON types (no dtype objects)
