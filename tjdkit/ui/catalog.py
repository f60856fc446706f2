"""How `tjdkit models ls` and `tjdkit recipes ls` show what tjdkit knows and ships: one table each."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from tjdkit.ui.progress import human_bytes, human_count


def models_table(rows, cache: Path) -> Table:
    """Each known model's size, and whether it is converted into the cache (or how to convert it)."""
    table = Table(title=f"models (cache: {cache})")
    for column in ("name", "aliases", "source", "params", "size", "cached"):
        table.add_column(column, overflow="fold")
    for row in rows:
        size = human_bytes(row.source_bytes) + " GGUF" if row.source_bytes else "-"
        if row.cache_path:
            cached = f"[green]yes[/] ({human_bytes(row.cache_bytes)})"
        elif row.source_bytes:
            cached = "[yellow]no[/] (`tjdkit models convert`)"
        else:
            cached = "-"
        params = human_count(row.params) if row.params else "-"
        table.add_row(row.name, ", ".join(row.aliases), row.source, params, size, cached)
    return table


def recipes_table(infos) -> Table:
    """Each shipped recipe with the command it drives."""
    table = Table(title="recipes")
    for column in ("name", "command", "description"):
        table.add_column(column)
    for info in infos:
        table.add_row(info.name, info.command, info.description)
    return table
