"""HyformerCheckpoint: the seed's state-dict container, saved as safetensors only.

The seed writes a pickle (`torch.save`) when asked and loads `.pt`/`.bin` files with a plain
`torch.load`, which can run code hidden in the file. tjdkit refuses both: a checkpoint a user
is handed must never execute anything when loaded. Published `model.pt` checkpoints go through
`tjdkit models convert` (tjdkit.models.hyformer.convert), which reads them with
`torch.load(weights_only=True)`, an unpickler that builds tensors and containers only.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from tjdkit.errors import TjdkitError

WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt")
# safetensors cannot hold two names for one storage: tied weights (the embedding and the lm/mlm
# heads) are written once and their other names kept here, so `load` gives every key back.
ALIASES_KEY = "tjdkit.aliases"
ORDER_KEY = "tjdkit.keys"  # safetensors sorts names; the state dict's own order is kept here
WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DistributedDataParallel


@dataclass
class HyformerCheckpoint:
    """A model's state dict; `model.load_state_dict(checkpoint.state_dict)` restores it."""

    state_dict: dict[str, Any]

    @classmethod
    def from_model(cls, model: nn.Module) -> HyformerCheckpoint:
        """The state dict of `model`, unwrapped from torch.compile / DDP and with their key prefixes removed."""
        while True:
            inner = getattr(model, "_orig_mod", None)
            inner = inner if isinstance(inner, nn.Module) else getattr(model, "module", None)
            if not isinstance(inner, nn.Module):
                break
            model = inner
        return cls(state_dict=strip_wrapper_prefixes(model.state_dict()))

    def save(self, path: str | Path, safe_serialization: bool = True) -> Path:
        """Write `path` (a .safetensors file) or `path`/model.safetensors (a directory or a name without
        suffix), atomically. Returns the file written. `safe_serialization=False` (a pickle) is refused."""
        if not safe_serialization:
            raise TjdkitError("HyformerCheckpoint.save writes safetensors only: a pickle could run code when loaded")
        path = Path(path).expanduser()
        if path.is_dir() or not path.suffix:
            path = path / WEIGHTS_NAME
        elif path.suffix != ".safetensors":
            raise TjdkitError(f"HyformerCheckpoint.save writes safetensors: give a .safetensors file or a directory, not {path}")
        tensors, aliases = _unique_tensors(self.state_dict)
        metadata = {"format": "pt", ALIASES_KEY: json.dumps(aliases), ORDER_KEY: json.dumps(list(self.state_dict))}
        _atomic_save_file(tensors, path, metadata)
        return path

    @classmethod
    def load(cls, path: str | Path, device: Optional[torch.device | str] = None) -> HyformerCheckpoint:
        """A .safetensors file, or a directory holding model.safetensors. Pickles are refused in one line."""
        from safetensors import safe_open

        path = Path(path).expanduser()
        if path.is_dir():
            if not (path / WEIGHTS_NAME).is_file():
                pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
                if pickles:
                    raise TjdkitError(_pickle_refusal(path / pickles[0]))
                raise TjdkitError(f"no {WEIGHTS_NAME} in {path}")
            path = path / WEIGHTS_NAME
        elif path.suffix in PICKLE_SUFFIXES:
            raise TjdkitError(_pickle_refusal(path))
        if not path.is_file():
            raise TjdkitError(f"checkpoint not found: {path}")
        try:
            with safe_open(str(path), framework="pt", device=str(device or "cpu")) as handle:
                state = {key: handle.get_tensor(key) for key in handle.keys()}
                metadata = handle.metadata() or {}
                aliases = json.loads(metadata.get(ALIASES_KEY, "{}"))
                order = json.loads(metadata.get(ORDER_KEY, "[]"))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
            raise TjdkitError(f"corrupt checkpoint {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        for alias, source in aliases.items():
            if source not in state:
                raise TjdkitError(f"corrupt checkpoint {path}: alias {alias} names a missing tensor {source}")
            state[alias] = state[source]
        if sorted(order) == sorted(state):
            state = {key: state[key] for key in order}
        return cls(state_dict=state)


def strip_wrapper_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Keys without torch.compile's `_orig_mod.` and DDP's `module.` (as the seed's checkpoints clean them)."""
    cleaned = {}
    for key, value in state.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        cleaned[key] = value
    return cleaned


def _pickle_refusal(path: Path) -> str:
    return (f"{path} is a pickle, which can run code when loaded: tjdkit loads safetensors only "
            "(a published Hyformer directory with model.pt converts with `tjdkit models convert SRC DEST`)")


def _unique_tensors(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Each storage once (contiguous, on the CPU), and {other name: kept name} for tensors that are the same view."""
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise TjdkitError(f"HyformerCheckpoint holds tensors only: {key} is a {type(value).__name__}")
        view = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), tuple(value.stride()), value.dtype)
        if value.numel() and view in seen:
            aliases[key] = seen[view]
            continue
        seen[view] = key
        tensors[key] = value.detach().contiguous().cpu()
    # Distinct names that still share memory (overlapping views) are copied so safetensors accepts them.
    storages: dict[int, str] = {}
    for key, value in list(tensors.items()):
        pointer = value.untyped_storage().data_ptr()
        if value.numel() and pointer in storages:
            tensors[key] = value.clone()
        storages.setdefault(pointer, key)
    return tensors, aliases


def _atomic_save_file(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors' save_file into a temp file beside `path`, then a rename: never half a file."""
    from safetensors.torch import save_file

    from tjdkit.fileio import user_errors

    with user_errors(path):
        real = Path(os.path.realpath(path))
        real.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=metadata)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, real)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
