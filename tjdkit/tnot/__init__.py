"""TNOT: test-time optimisation of a delta on the final hidden state (SLOT) and
entropy-triggered reflection while generating (SRGen), for any causal LM.

    from tjdkit.tnot import TnotConfig, tnot_generate, enable_tnot
    results = tnot_generate(model, input_ids, config=TnotConfig(steps=3, adaptive=True))

`TnotConfig(mode="srgen")`, and `enable_tnot` configured from the environment, run the published
SRGen's exact rules instead of tjdkit's own (tjdkit.tnot.srgen).
"""

from tjdkit.tnot.config import TnotConfig
from tjdkit.tnot.env import config_from_env

__all__ = [
    "EntropyMonitor", "TnotConfig", "TnotResult", "TokenRecord", "adaptive_threshold", "attach_tnot",
    "config_from_env", "enable_tnot", "entropy", "fit_delta", "tnot_generate",
]


def __getattr__(name):
    """torch-heavy parts load on first use, so `TnotConfig` stays cheap for the CLI."""
    if name in ("TnotResult", "TokenRecord", "tnot_generate"):
        from tjdkit.tnot import generate

        return getattr(generate, name)
    if name in ("EntropyMonitor", "adaptive_threshold", "entropy"):
        from tjdkit.tnot import trigger

        return getattr(trigger, name)
    if name == "fit_delta":
        from tjdkit.tnot.delta import fit_delta

        return fit_delta
    if name in ("enable_tnot", "attach_tnot"):
        from tjdkit.tnot import decorator

        return getattr(decorator, name)
    raise AttributeError(f"module 'tjdkit.tnot' has no attribute {name!r}")
