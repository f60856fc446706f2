"""Hyformer's three losses. Positions labelled -100 and NaN targets do not count; a batch with
nothing to count gives a zero loss that still backpropagates (never NaN).

They are defined in modeling_hyformer.py (the file saved directories carry); this is their tjdkit path."""

from tjdkit.models.hyformer.modeling_hyformer import (
    IGNORE_INDEX,
    compute_lm_loss,
    compute_mlm_loss,
    compute_prediction_loss,
)

__all__ = ["IGNORE_INDEX", "compute_lm_loss", "compute_mlm_loss", "compute_prediction_loss"]
