"""The one check of a split name, shared by the data sources and the CLI, so the message is the same everywhere."""

from __future__ import annotations

from typing import Iterable

from tjdkit.errors import TjdkitError


def check_split(name: str, split: str, known: Iterable[str]) -> None:
    """Refuse a split that dataset `name` does not offer, naming the ones it does."""
    known = tuple(known)
    if split not in known:
        raise TjdkitError(f"unknown split '{split}' for {name} (known: {', '.join(known)})")
