"""List, print and copy the recipes shipped with tjdkit."""

from __future__ import annotations

from pathlib import Path

import typer

from tjdkit.cli.common import JsonOpt, check_outputs, stdout, write_json

app = typer.Typer(help="List, print and copy the named YAML recipes.", no_args_is_help=True)


@app.command("ls", epilog="Example:\n\n  tjdkit recipes ls --json -\n")
def list_(json_path: JsonOpt = None) -> None:
    """List the shipped recipes and the command each one drives."""
    check_outputs(json_path)
    from tjdkit.recipes import list_recipes
    from tjdkit.ui.catalog import recipes_table

    infos = list_recipes()
    stdout().print(recipes_table(infos))
    write_json(json_path, [{"name": i.name, "command": i.command, "description": i.description, "path": str(i.path)} for i in infos])


@app.command("show", epilog="Example:\n\n  tjdkit recipes show stemp-cp\n")
def show(name: str = typer.Argument(..., help="Recipe name or path.")) -> None:
    """Print a recipe's YAML."""
    from tjdkit.recipes import recipe_text

    typer.echo(recipe_text(name), nl=False)


@app.command("cp", epilog="Example:\n\n  tjdkit recipes cp stemp-cp mine.yaml && tjdkit train --recipe mine.yaml\n")
def copy(
    name: str = typer.Argument(..., help="Recipe name or path."),
    dest: Path = typer.Argument(..., help="Destination file or directory."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing file."),
) -> None:
    """Copy a recipe to edit it; pass the copy back with --recipe PATH (train, chat, tnot, factorize)."""
    from tjdkit.recipes import copy_recipe

    written = copy_recipe(name, dest, overwrite=force)
    typer.echo(str(written))
