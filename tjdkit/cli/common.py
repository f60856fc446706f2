"""Options and helpers every subcommand shares."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer
from rich.console import Console

RecipeOpt = Annotated[Optional[str], typer.Option("--recipe", "-r", help="Recipe name or path to a YAML file.")]
SetOpt = Annotated[
    Optional[List[str]],
    typer.Option("--set", "-s", metavar="KEY.SUB=VALUE", help="Override any recipe key; repeatable."),
]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Also write the result as JSON to this path.")]


def is_main_process() -> bool:
    """Under `accelerate launch`, only rank 0 talks; the other processes stay quiet."""
    import os

    return os.environ.get("RANK", "0") == "0"


def stdout() -> Console:
    return Console(highlight=False, quiet=not is_main_process())


def stderr() -> Console:
    return Console(stderr=True, highlight=False, quiet=not is_main_process())


def write_json(path: Optional[Path], data: Any) -> None:
    if path is None or not is_main_process():
        return
    from tjdkit.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
    stderr().print(f"[dim]wrote {path}[/]")


def quiet_libraries() -> None:
    """transformers' warnings and tqdm bars would interleave with our own display."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF de-quantiser's bar; read when tqdm is imported
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_model_with_progress(name: str, dtype: str = "auto", device: str = "auto", seed: int = 0):
    """load_model with a spinner on stderr naming each slow stage (the first GGUF conversion)."""
    from tjdkit.models import load_model
    from tjdkit.ui.progress import stage_display

    quiet_libraries()
    with stage_display(stderr(), f"Loading {name}") as on_stage:
        return load_model(name, dtype=dtype, device=device, seed=seed, on_stage=on_stage)


def load_run_with_progress(run_dir, model_flag: Optional[str] = None, dtype: str = "auto", device: str = "auto"):
    """A trained run's model (with its backbone weights), tokenizer and head, with a spinner.

    `model_flag` (a --model the user also gave) must name the run's own model: checked
    before anything slow is loaded.
    """
    from tjdkit.errors import TjdkitError
    from tjdkit.runs import checkpoint_dir, load_run, read_checkpoint
    from tjdkit.ui.progress import stage_display

    info = read_checkpoint(checkpoint_dir(run_dir))
    if model_flag and model_flag != info["model"]:
        raise TjdkitError(f"{run_dir} was trained on {info['model']}, not {model_flag} (drop --model)")
    quiet_libraries()
    with stage_display(stderr(), f"Loading {info['model']} and the {info['head']['name']} head from {run_dir}"):
        return load_run(run_dir, dtype=dtype, device=device)
