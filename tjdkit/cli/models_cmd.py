"""Known models, their sizes and the conversion cache."""

from __future__ import annotations

import time

import typer

from tjdkit.cli.common import JsonOpt, check_outputs, quiet_libraries, stderr, stdout, write_json

app = typer.Typer(help="Known models and the conversion cache.", no_args_is_help=True)


@app.command("ls")
def list_(json_path: JsonOpt = None) -> None:
    """Model names, sizes, and whether each is converted and cached."""
    check_outputs(json_path)
    from tjdkit.models import cache_root
    from tjdkit.models.catalog import catalog
    from tjdkit.ui.catalog import models_table

    rows = catalog()
    stdout().print(models_table(rows, cache_root()))
    write_json(json_path, [row.to_dict() for row in rows])


@app.command("convert")
def convert(
    name: str = typer.Argument(..., help="gemma3-270m (gemma3) or a path to a .gguf file."),
    force: bool = typer.Option(False, "--force", help="Convert again even if cached."),
) -> None:
    """Convert a GGUF model once into the safetensors cache (later loads take seconds)."""
    from tjdkit.errors import TjdkitError
    from tjdkit.fileio import directory_size
    from tjdkit.models import ensure_converted, resolve_model
    from tjdkit.models.cache import entry_dir, is_complete
    from tjdkit.ui.progress import human_bytes, stage_display

    resolved = resolve_model(name)
    if resolved.gguf is None:
        raise TjdkitError(f"'{name}' is not a GGUF model: it loads directly, there is nothing to convert")
    if is_complete(entry_dir(resolved.gguf)) and not force:
        stdout().print(f"{name}: already cached at {entry_dir(resolved.gguf)} (use --force to convert again)")
        return
    quiet_libraries()
    started = time.time()
    with stage_display(stderr(), f"Converting {name}") as on_stage:
        path = ensure_converted(resolved.gguf, force=force, on_stage=on_stage)
    stdout().print(f"{name}: converted in {time.time() - started:.0f} s -> {path} ({human_bytes(directory_size(path))})")
