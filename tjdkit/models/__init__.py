"""Backbones: the registry of names, the GGUF conversion cache and `load_model`, tiny presets,
prompt formats (`models.prompts`) and Hyformer."""

from tjdkit.models.cache import cache_root, cached_entries, ensure_converted
from tjdkit.models.loading import load_model, resolve_device, resolve_dtype
from tjdkit.models.registry import REGISTERED, ModelInfo, ResolvedModel, known_names, resolve_model

__all__ = [
    "REGISTERED",
    "ModelInfo",
    "ResolvedModel",
    "cache_root",
    "cached_entries",
    "ensure_converted",
    "known_names",
    "load_model",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
]

