"""The model's own greedy continuations of prompts, kept on disk, so self-distilled training data
grows over runs: generating them is the slow part of training a head on a CPU (minutes per few
hundred prompts, where the head's own training takes less), and a run that asks for more prompts
than the last one generates only the new ones.

One directory per writer (the model's weights, as a fingerprint, and its weight format), holding
JSON shards written atomically, one per generated batch: a stopped run keeps every finished
batch, and nothing in the cache can execute code when read. A continuation generated with room
for M tokens serves any request for at most M (a greedy continuation's prefix is the greedy
continuation), and one that ended at end-of-sequence serves any request.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import torch

FORMAT = 1
SAMPLED_VALUES = 4096  # values read from each weight tensor for the fingerprint


def weights_fingerprint(model) -> str:
    """A digest of the model's config, its weight format and a strided sample of every weight tensor:
    another checkpoint, a fine-tune or a factorised copy gets another fingerprint, without hashing
    every byte of a large model."""
    digest = hashlib.sha256()
    digest.update(model.config.to_json_string(use_diff=False).encode())
    digest.update(str(getattr(model, "tjdkit_weights", "")).encode())
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            flat = tensor.detach().reshape(-1)
            step = max(flat.numel() // SAMPLED_VALUES, 1)
            sample = flat[::step][:SAMPLED_VALUES].float().cpu().contiguous()
            digest.update(f"{name}|{list(tensor.shape)}|{tensor.dtype}".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:20]


def prompt_key(prompt: tuple[int, ...] | list[int]) -> str:
    return hashlib.sha256(json.dumps(list(prompt)).encode()).hexdigest()[:24]


class ContinuationStore:
    """Greedy continuations of one writer: prompt -> (room it was generated with, tokens)."""

    def __init__(self, directory: str | Path, eos: Optional[int]):
        self.directory, self.eos = Path(directory), eos
        self.entries: dict[str, tuple[int, list[int]]] = {}
        for shard in sorted(self.directory.glob("*.json")) if self.directory.is_dir() else ():
            self._read(shard)

    @classmethod
    def for_writer(cls, root: str | Path, model, eos: Optional[int]) -> "ContinuationStore":
        return cls(Path(root) / weights_fingerprint(model), eos)

    def _read(self, shard: Path) -> None:
        try:
            data = json.loads(shard.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # unreadable: generated again
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return
        for entry in data.get("entries", []):
            if (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str) and isinstance(entry[1], int)
                    and isinstance(entry[2], list) and all(isinstance(token, int) for token in entry[2])):
                self._keep(entry[0], entry[1], entry[2])

    def _keep(self, key: str, room: int, tokens: list[int]) -> None:
        known = self.entries.get(key)
        if known is None or room > known[0]:
            self.entries[key] = (room, tokens)

    def get(self, prompt, room: int) -> Optional[list[int]]:
        """The continuation for `prompt` with room for `room` tokens, if one generated before serves."""
        known = self.entries.get(prompt_key(prompt))
        if known is None:
            return None
        known_room, tokens = known
        ended = self.eos is not None and self.eos in tokens
        return tokens[:room] if known_room >= room or ended else None

    def put(self, generated: list[tuple[tuple[int, ...], int, list[int]]]) -> None:
        """Keep (prompt, room, continuation) triples, as one new shard. A cache that cannot be written
        (read-only or full disk) only costs the next run the generation."""
        from tjdkit.errors import TjdkitError
        from tjdkit.fileio import atomic_write_text

        entries = [[prompt_key(prompt), room, list(tokens)] for prompt, room, tokens in generated]
        for key, room, tokens in entries:
            self._keep(key, room, tokens)
        text = json.dumps({"format": FORMAT, "entries": entries})
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.directory / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.json", text)
        except (OSError, TjdkitError):
            pass
