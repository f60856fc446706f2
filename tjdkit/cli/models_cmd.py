"""Known models, their sizes and the conversion cache."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from tjdkit.cli.common import JsonOpt, check_outputs, quiet_libraries, stderr, stdout, write_json

app = typer.Typer(help="Known models and the conversion cache.", no_args_is_help=True)


@app.command("ls", epilog="Example:\n\n  tjdkit models ls --json - | jq '.[].name'\n")
def list_(json_path: JsonOpt = None) -> None:
    """Model names, sizes, and whether each is converted and cached."""
    check_outputs(json_path)
    from tjdkit.models import cache_root
    from tjdkit.models.catalog import catalog
    from tjdkit.ui.catalog import models_table

    rows = catalog()
    stdout().print(models_table(rows, cache_root()))
    write_json(json_path, [row.to_dict() for row in rows])


@app.command("convert", epilog="Examples:\n\n  tjdkit models convert gemma3\n\n  tjdkit models convert published-hyformer/ my-hyformer/\n")
def convert(
    name: str = typer.Argument(..., help="gemma3-270m (gemma3), a path to a .gguf file, or a published Hyformer "
                               "directory (model.pt + model_config.json)."),
    dest: Optional[Path] = typer.Argument(None, help="Where a published Hyformer is written as a tjdkit Hyformer directory."),
    force: bool = typer.Option(False, "--force", help="Convert again even if cached; replace a non-empty DEST."),
    drop_prediction_head: bool = typer.Option(
        False, "--drop-prediction-head", help="Hyformer: convert without the published prediction head (tjdkit's differs)."
    ),
) -> None:
    """Convert a GGUF model once into the safetensors cache (later loads take seconds), or a published
    Hyformer checkpoint (joint_improvement's model.pt) into a tjdkit Hyformer directory at DEST."""
    from tjdkit.errors import TjdkitError
    from tjdkit.fileio import directory_size
    from tjdkit.models.hyformer.convert import is_published_checkpoint
    from tjdkit.ui.progress import human_bytes

    if is_published_checkpoint(name):
        from tjdkit.models.hyformer.convert import convert_published

        if dest is None:
            raise TjdkitError(f"{name} is a published Hyformer checkpoint: give DEST, the directory to write")
        quiet_libraries()
        path = convert_published(name, dest, drop_prediction_head=drop_prediction_head, force=force)
        stdout().print(f"{name}: converted to a tjdkit Hyformer -> {path} ({human_bytes(directory_size(path))})")
        return
    if dest is not None or drop_prediction_head:
        raise TjdkitError(f"DEST and --drop-prediction-head are for published Hyformer directories; {name} is not one")

    from tjdkit.models import ensure_converted, resolve_model
    from tjdkit.models.cache import entry_dir, is_complete
    from tjdkit.ui.progress import stage_display

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
