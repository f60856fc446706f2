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
JsonOpt = Annotated[
    Optional[Path], typer.Option("--json", help="Also write the result as JSON to this path ('-': stdout, tables go to stderr).")
]
SeedOpt = Annotated[
    Optional[int],
    typer.Option("--seed", help="Seed for Python, numpy and torch (and the recipe's seed); the same seed gives the same result."),
]

_json_on_stdout = False  # set by check_outputs(json_path="-"): stdout then carries the JSON alone


def is_main_process() -> bool:
    """Under `accelerate launch`, only rank 0 talks; the other processes stay quiet."""
    import os

    return os.environ.get("RANK", "0") == "0"


PIPE_WIDTH = 250  # columns for tables written to a pipe or a log: wide enough that no header is cut


def console_width(stream) -> Optional[int]:
    """COLUMNS when set; else None on a terminal (rich measures it) and PIPE_WIDTH for a pipe or a file,
    where rich's default of 80 would cut headers and cells with '…'."""
    import os

    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return None if stream.isatty() else PIPE_WIDTH
    except (AttributeError, ValueError):  # a closed or unusual stream
        return PIPE_WIDTH


def _console(to_stderr: bool) -> Console:
    import sys

    width = console_width(sys.stderr if to_stderr else sys.stdout)
    return Console(stderr=to_stderr, highlight=False, quiet=not is_main_process(), width=width)


def stdout() -> Console:
    """Tables and results; on stderr when `--json -` claims stdout for the JSON."""
    return _console(_json_on_stdout)


def stderr() -> Console:
    return _console(True)


def seed_all(seed: Optional[int]) -> int:
    """Seed Python, numpy and torch; returns the seed used (recorded in the command's settings)."""
    from tjdkit.recipes import seed_everything

    return seed_everything(seed)


def fresh_seed(seed: Optional[int]) -> int:
    """The seed a sampling command runs with: the user's, else a new random one (recorded, so the run can be repeated)."""
    import random

    return seed if seed is not None else random.SystemRandom().randrange(2**31)


def settings(command: str, recipe=None, **values) -> dict:
    """The resolved settings of a command (recipe after overrides, model, dtype, seed, versions) for --json and files."""
    from tjdkit.recipes import to_mapping
    from tjdkit.recipes import resolved_settings

    return resolved_settings(command, to_mapping(recipe) if recipe is not None else None, **values)


def check_outputs(json_path: Optional[Path] = None, plot: Optional[Path] = None, record: Optional[Path] = None) -> None:
    """Every output file a command will write, checked before any slow work starts."""
    global _json_on_stdout
    from tjdkit.fileio import check_output_file, is_stdout

    check_output_file(json_path, what="--json", allow_stdout=True)
    check_output_file(plot, suffix=".png", what="--plot")
    check_output_file(record, what="--record")
    _json_on_stdout = is_stdout(json_path)


def write_json(path: Optional[Path], data: Any) -> None:
    if path is None or not is_main_process():
        return
    from tjdkit.fileio import atomic_write_text, is_stdout

    text = json.dumps(data, indent=2, default=str) + "\n"
    if is_stdout(path):
        import sys

        sys.stdout.write(text)
        sys.stdout.flush()
        return
    atomic_write_text(path, text)
    stderr().print(f"[dim]wrote {path}[/]")


def nonempty_path(text: Optional[str], flag: str) -> Optional[Path]:
    """A path flag as a Path; an empty one is refused (Path("") would silently mean the current directory)."""
    from tjdkit.errors import TjdkitError

    if text is None:
        return None
    if not text.strip():
        raise TjdkitError(f"{flag} is empty: give a path")
    return Path(text)


def check_text(text: Optional[str], what: str = "the prompt") -> Optional[str]:
    """Text from the command line or a terminal arrives with undecodable bytes as surrogates: refuse it."""
    from tjdkit.errors import TjdkitError

    if text is None:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        byte = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"character U+{code:04X}"
        raise TjdkitError(f"{what} is not UTF-8 text ({byte} at position {exc.start})") from None
    return text


def read_stdin_text() -> str:
    """A prompt from standard input (`-`): UTF-8 text, else one error line."""
    import sys

    from tjdkit.errors import TjdkitError

    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TjdkitError(f"standard input is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def quiet_libraries() -> None:
    """transformers' warnings and tqdm bars would interleave with our own display."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF de-quantiser's bar; read when tqdm is imported
    import warnings

    from transformers.utils import logging as hf_logging

    # peft (<= 0.21) calls a transformers method deprecated in 5.x during LoRA training: not the user's to act on
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
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
    from tjdkit.training.runs import checkpoint_dir, load_run, read_checkpoint
    from tjdkit.ui.progress import stage_display

    info = read_checkpoint(checkpoint_dir(run_dir))
    if model_flag and model_flag != info["model"]:
        raise TjdkitError(f"{run_dir} was trained on {info['model']}, not {model_flag} (drop --model)")
    quiet_libraries()
    with stage_display(stderr(), f"Loading {info['model']} and the {info['head']['name']} head from {run_dir}"):
        return load_run(run_dir, dtype=dtype, device=device)
