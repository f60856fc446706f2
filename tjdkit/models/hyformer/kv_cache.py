"""The seed's module path for KVCache (`joint_improvement.hyformer.layers.kv_cache`); the class lives in layers."""

from tjdkit.models.hyformer.layers import KVCache

__all__ = ["KVCache"]
