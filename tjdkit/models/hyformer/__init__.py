"""Hyformer (Izdebski et al. 2025): one transformer as causal LM, masked LM and property predictor.

Importing this package registers the model type "hyformer" with transformers' Auto classes,
so `AutoModelForCausalLM.from_pretrained(dir)` and tjdkit's `load_model(dir)` load saved ones.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from tjdkit.models.hyformer.checkpoint import HyformerCheckpoint
from tjdkit.models.hyformer.config import HyformerConfig
from tjdkit.models.hyformer.layers import KVCache
from tjdkit.models.hyformer.losses import IGNORE_INDEX, compute_lm_loss, compute_mlm_loss, compute_prediction_loss
from tjdkit.models.hyformer.model import TASKS, Hyformer, HyformerModel, ModelInput, ModelOutput
from tjdkit.models.hyformer.prediction import PredictionHead

AutoConfig.register(HyformerConfig.model_type, HyformerConfig, exist_ok=True)
AutoModel.register(HyformerConfig, HyformerModel, exist_ok=True)
AutoModelForCausalLM.register(HyformerConfig, Hyformer, exist_ok=True)

__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "Hyformer",
    "HyformerCheckpoint",
    "HyformerConfig",
    "HyformerModel",
    "KVCache",
    "ModelInput",
    "ModelOutput",
    "PredictionHead",
    "compute_lm_loss",
    "compute_mlm_loss",
    "compute_prediction_loss",
]
