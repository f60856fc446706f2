"""Train a joint head (or fine-tune a backbone with one), or a Hyformer, from a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tjdkit.cli.common import (
    JsonOpt,
    SetOpt,
    check_outputs,
    load_model_with_progress,
    nonempty_path,
    quiet_libraries,
    stderr,
    stdout,
    write_json,
)


def train(
    recipe: str = typer.Argument(..., help="Recipe name (tjdkit recipes ls) or path to a YAML file."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Backbone: model name, directory or .gguf file."),
    head: Optional[str] = typer.Option(None, "--head", help="stp, multihead, cp or mps."),
    rank: Optional[int] = typer.Option(None, "--rank", help="CP rank / MPS bond dimension."),
    horizon: Optional[int] = typer.Option(None, "--horizon", help="Tokens predicted per step."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Run directory (default runs/RECIPE)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's last checkpoint."),
    overrides: SetOpt = None,
    json_path: JsonOpt = None,
) -> None:
    """Train a joint head (or a Hyformer: recipe hyformer-smiles) from a recipe; writes checkpoints, metrics and the resolved recipe."""
    from tjdkit.config import HyformerTrainRecipe, TrainRecipe, train_schema
    from tjdkit.errors import TjdkitError
    from tjdkit.recipes import find_recipe, load_recipe, read_recipe

    if train_schema(read_recipe(recipe)) is HyformerTrainRecipe or any(text.startswith("hyformer.") for text in overrides or []):
        head_flags = [flag for flag, value in (("--model", model), ("--head", head), ("--rank", rank), ("--horizon", horizon)) if value is not None]
        if head_flags:
            raise TjdkitError(
                f"{head_flags[0]} applies to joint-head recipes; a Hyformer recipe sets its model in hyformer: "
                "(e.g. --set hyformer.d_model=128)"
            )
        return _train_hyformer(recipe, nonempty_path(out, "--out"), resume, overrides or [], json_path)

    out = nonempty_path(out, "--out")
    flags = {"model.name": model, "head.name": head, "head.rank": rank, "head.horizon": horizon}
    config = load_recipe(recipe, TrainRecipe, overrides or [], flags)
    run_dir = out or Path(config.out or Path("runs") / find_recipe(recipe).stem)
    check_run_dir(run_dir, resume)

    from tjdkit.training.loop import resume_dir
    from tjdkit.models import resolve_device
    from tjdkit.training.heads import check_head, check_resumable
    from tjdkit.training.heads import train as run_training

    check_head(config)
    check_outputs(json_path)
    resolve_device(config.model.device)  # a device name that cannot work fails before the model loads
    if resume:
        check_resumable(config, resume_dir(run_dir))
    from tjdkit.ui.training import TrainDisplay, final_eval, train_summary

    quiet_libraries()
    loaded, tokenizer = load_model_with_progress(config.model.name, config.model.dtype, config.model.device)
    console = stderr()
    console.print(
        f"[bold]train[/] {config.head.name} head (rank {config.head.rank}, horizon {config.head.horizon}) on "
        f"{config.model.name}, backbone {config.backbone.mode}, data {config.data.dataset} -> {run_dir}"
    )
    with TrainDisplay(console) as display:
        result = run_training(config, run_dir, loaded, tokenizer, resume=resume, on_event=display)
    last = final_eval(result.history)
    final = result.history[-1] if result.history else {}
    stdout().print(train_summary(result, run_dir, last))
    write_json(json_path, {"run_dir": str(run_dir), "steps": result.steps, "resumed_from": result.resumed_from,
                           "eval_nll": result.eval_nll, "base_eval_nll": last["base_eval_nll"] if last else None,
                           "final": final})


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Before anything slow: a new run needs a free, writable place; --resume needs a run there."""
    from tjdkit.errors import TjdkitError
    from tjdkit.fileio import check_output_dir
    from tjdkit.training.runs import is_run

    if is_run(run_dir) and not resume:
        raise TjdkitError(f"{run_dir} already holds a run: add --resume to continue it, or choose another --out")
    run_files = {"recipe.yaml", "metrics.jsonl", "best", "last"}  # a run killed before its first checkpoint has these
    if run_dir.is_dir() and any(p.name not in run_files and not p.name.startswith(".") for p in run_dir.iterdir()):
        raise TjdkitError(f"{run_dir} holds other files, not a run: choose an empty or new --out")
    check_output_dir(run_dir, force=True)


def _train_hyformer(recipe: str, out: Optional[Path], resume: bool, overrides: list[str], json_path: Optional[Path]) -> None:
    from tjdkit.config import HyformerTrainRecipe
    from tjdkit.data.smiles import require_rdkit
    from tjdkit.recipes import find_recipe, load_recipe

    config = load_recipe(recipe, HyformerTrainRecipe, overrides)
    run_dir = out or Path(config.out or Path("runs") / find_recipe(recipe).stem)
    check_run_dir(run_dir, resume)
    from tjdkit.training.hyformer import check_recipe, train_hyformer

    check_recipe(config)
    check_outputs(json_path)
    require_rdkit()
    quiet_libraries()
    from tjdkit.ui.training import TrainDisplay, final_eval, hyformer_train_summary

    h, w = config.hyformer, config.tasks
    console = stderr()
    console.print(
        f"[bold]train[/] Hyformer (d_model {h.d_model}, {h.n_layers} layers, {h.n_heads} heads) on smiles, "
        f"tasks lm {w.lm:g} · mlm {w.mlm:g} · prediction {w.prediction:g} -> {run_dir}"
    )
    with TrainDisplay(console) as display:
        result = train_hyformer(config, run_dir, resume=resume, on_event=display)
    last = final_eval(result.history, "eval_loss") or result.last_eval
    final = result.history[-1] if result.history else {}
    stdout().print(hyformer_train_summary(result, run_dir, last))
    stdout().print(f"[dim]scores on the eval split; `tjdkit eval {run_dir} --dataset smiles` samples molecules and scores the test split[/]")
    write_json(json_path, {"run_dir": str(run_dir), "kind": "hyformer", "steps": result.steps, "resumed_from": result.resumed_from,
                           "params": result.params, "train_molecules": result.train_molecules, "best_eval_loss": result.best,
                           "eval": last, "final": final})
