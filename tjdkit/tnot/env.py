"""The seeds' environment variables, read over a `TnotConfig` (compatibility, not the main interface).

    os.environ["times"] = "5"; os.environ["entropy_threshold"] = "2.5"
    config = config_from_env()            # TnotConfig with those two changed

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
}
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


def config_from_env(base: Optional[TnotConfig] = None, environ: Optional[Mapping[str, str]] = None) -> TnotConfig:
    """`base` (default: TnotConfig()) with every seed variable that is set applied, then checked.

    `record_entropy` switches recording on; without `entropy_output_file` it writes to
    entropy_analysis.jsonl, as the seeds do. Unset variables leave `base` as it is.
    """
    env = os.environ if environ is None else environ
    changes = {}
    for name, (attribute, kind) in ENV_FIELDS.items():
        if name in env:
            changes[attribute] = _parse(name, env[name], kind)
    record = _parse("record_entropy", env["record_entropy"], bool) if "record_entropy" in env else None
    if record is False:
        changes["record_path"] = None
    elif record and not changes.get("record_path"):
        changes["record_path"] = "entropy_analysis.jsonl"
    elif record is None and "entropy_output_file" in env:
        changes.pop("record_path")  # the file alone does not switch recording on
    return replace(base or TnotConfig(), **changes).check()
