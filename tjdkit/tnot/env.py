"""The seeds' environment variables, read over a `TnotConfig` (compatibility, not the main interface).

    os.environ["times"] = "5"; os.environ["entropy_threshold"] = "2.5"
    config = config_from_env()            # TnotConfig with those two changed
    config = config_from_env(srgen=True)  # SRGen's defaults and rules (mode "srgen"), as enable_tnot reads them

A malformed value is an error naming the variable, never a silent default.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Mapping, Optional

from tjdkit.errors import TjdkitError
from tjdkit.tnot.config import TnotConfig

# variable -> (TnotConfig field, type)
ENV_FIELDS: dict[str, tuple[str, type]] = {
    "prompt_only": ("optimize_prompt", bool),
    "times": ("steps", int),
    "lr": ("lr", float),
    "entropy_weight": ("entropy_weight", float),
    "entropy_control": ("entropy_control", bool),
    "entropy_threshold": ("entropy_threshold", float),
    "adaptive_entropy": ("adaptive", bool),
    "adaptive_entropy_N": ("window", int),
    "adaptive_entropy_K": ("k", float),
    "entropy_output_file": ("record_path", str),
    "minimal_std": ("min_std", float),
    "minimal_threshold": ("floor", float),
    "max_retries": ("max_retries", int),
}
# What SRGen does with a variable unset, where it differs from TnotConfig's defaults: one AdamW
# step (`times` 1) and no entropy control.
SRGEN_DEFAULTS = TnotConfig(steps=1, entropy_control=False, mode="srgen")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _parse(name: str, text: str, kind: type):
    value = text.strip()
    if kind is bool:
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise TjdkitError(f"environment variable {name}={text!r} is not a boolean (True or False)")
    try:
        return kind(value)
    except ValueError:
        raise TjdkitError(f"environment variable {name}={text!r} is not a valid {kind.__name__}") from None


def config_from_env(
    base: Optional[TnotConfig] = None, environ: Optional[Mapping[str, str]] = None, *, srgen: bool = False
) -> TnotConfig:
    """`base` (default: TnotConfig()) with every seed variable that is set applied, then checked.

    `record_entropy` switches recording on; without `entropy_output_file` it writes to
    entropy_analysis.jsonl, as the seeds do. Unset variables leave `base` as it is.

    `srgen`: mode "srgen" over SRGen's defaults (SRGEN_DEFAULTS), and its two switches:
    `use_entropy_control` runs the evaluator's retry loop (entropy control with reflections);
    `entropy_control` alone is the decorator alone, whose first trigger ends the response.
    """
    env = os.environ if environ is None else environ
    changes = {}
    for name, (attribute, kind) in ENV_FIELDS.items():
        if name in env:
            changes[attribute] = _parse(name, env[name], kind)
    if srgen:
        base, changes["mode"] = base or SRGEN_DEFAULTS, "srgen"
        if "use_entropy_control" in env and _parse("use_entropy_control", env["use_entropy_control"], bool):
            changes["entropy_control"] = changes["reflect"] = True
        elif changes.get("entropy_control"):
            changes["reflect"] = False
    record = _parse("record_entropy", env["record_entropy"], bool) if "record_entropy" in env else None
    if record is False:
        changes["record_path"] = None
    elif record and not changes.get("record_path"):
        changes["record_path"] = "entropy_analysis.jsonl"
    elif record is None and "entropy_output_file" in env:
        changes.pop("record_path")  # the file alone does not switch recording on
    return replace(base or TnotConfig(), **changes).check()
