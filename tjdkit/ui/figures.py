"""matplotlib without a display, and PNGs written whole or not at all (every `--plot`)."""

from __future__ import annotations

import io
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend: plots are files, never windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(figure, path: Path) -> None:
    """Render `figure` to `path` atomically and close it."""
    from tjdkit.fileio import atomic_write_bytes

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    pyplot().close(figure)
    atomic_write_bytes(path, buffer.getvalue())
