"""Train a joint head (or fine-tune a backbone with one), or a Hyformer, from a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tjdkit.cli.common import (
    JsonOpt,
    RecipeOpt,
    SeedOpt,
    SetOpt,
    check_outputs,
    load_model_with_progress,
    nonempty_path,
    quiet_libraries,
    seed_all,
    settings,
    stderr,
    stdout,
    write_json,
)

EXAMPLES = """Examples:

  tjdkit train stemp-cp --head mps --rank 4 --seed 1
  tjdkit train --recipe my-recipe.yaml --grad-accum 4 --report-to tensorboard --json -
"""


def train(
    recipe: Optional[str] = typer.Argument(None, help="Recipe name (tjdkit recipes ls) or path to a YAML file (or --recipe)."),
    recipe_option: RecipeOpt = None,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Backbone: model name, directory or .gguf file."),
    head: Optional[str] = typer.Option(None, "--head", help="stp, multihead, cp or mps."),
    rank: Optional[int] = typer.Option(None, "--rank", help="CP rank / MPS bond dimension."),
    horizon: Optional[int] = typer.Option(None, "--horizon", help="Tokens predicted per step."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Run directory (default runs/RECIPE)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's last checkpoint."),
    seed: SeedOpt = None,
    grad_accum: Optional[int] = typer.Option(
        None, "--grad-accum", help="Micro-batches per optimizer step (train.gradient_accumulation_steps): effective batch = batch x N."
    ),
    report_to: Optional[str] = typer.Option(
        None, "--report-to", help="Also log metrics to tensorboard or wandb (offline unless configured), or none (train.report_to)."
    ),
    overrides: SetOpt = None,
    json_path: JsonOpt = None,
) -> None:
    """Train a joint head (or a Hyformer: recipe hyformer-smiles) from a recipe; writes checkpoints, metrics, the resolved recipe and settings.json."""
    from tjdkit.config import HyformerTrainRecipe, TrainRecipe, train_schema
    from tjdkit.errors import TjdkitError
    from tjdkit.recipes import find_recipe, load_recipe, read_recipe

    if recipe is not None and recipe_option is not None:
        raise TjdkitError("give the recipe once: as the argument or with --recipe, not both")
    recipe = recipe if recipe is not None else recipe_option
    if recipe is None:
        raise TjdkitError("give a recipe: tjdkit train NAME|PATH or --recipe NAME|PATH (tjdkit recipes ls)")
    loop_flags = {"train.seed": seed, "train.gradient_accumulation_steps": grad_accum, "train.report_to": report_to}
    if train_schema(read_recipe(recipe)) is HyformerTrainRecipe or any(text.startswith("hyformer.") for text in overrides or []):
        head_flags = [flag for flag, value in (("--model", model), ("--head", head), ("--rank", rank), ("--horizon", horizon)) if value is not None]
        if head_flags:
            raise TjdkitError(
                f"{head_flags[0]} applies to joint-head recipes; a Hyformer recipe sets its model in hyformer: "
                "(e.g. --set hyformer.d_model=128)"
            )
        return _train_hyformer(recipe, nonempty_path(out, "--out"), resume, overrides or [], json_path, loop_flags)

    out = nonempty_path(out, "--out")
    flags = {"model.name": model, "head.name": head, "head.rank": rank, "head.horizon": horizon, **loop_flags}
    config = load_recipe(recipe, TrainRecipe, overrides or [], flags)
    run_dir = out or Path(config.out or Path("runs") / find_recipe(recipe).stem)
    check_run_dir(run_dir, resume)

    from tjdkit.training.loop import resume_dir
    from tjdkit.models import resolve_device
    from tjdkit.training.heads import check_head, check_resumable
    from tjdkit.training.heads import train as run_training

    from tjdkit.training.loop import check_report_to

    check_head(config)
    check_report_to(config.train.report_to)
    check_outputs(json_path)
    resolve_device(config.model.device)  # a device name that cannot work fails before the model loads
    if resume:
        check_resumable(config, resume_dir(run_dir))
    from tjdkit.ui.training import TrainDisplay, final_eval, train_summary

    quiet_libraries()
    seed_all(config.train.seed)
    loaded, tokenizer = load_model_with_progress(config.model.name, config.model.dtype, config.model.device, seed=config.train.seed)
    console = stderr()
    console.print(
        f"[bold]train[/] {config.head.name} head (rank {config.head.rank}, horizon {config.head.horizon}) on "
        f"{config.model.name}, backbone {config.backbone.mode}, data {config.data.dataset} -> {run_dir}"
    )
    console.print(f"[dim]{effective_batch_text(config.train)} · seed {config.train.seed}"
                  f"{' · metrics also to ' + config.train.report_to if config.train.report_to != 'none' else ''}[/]")
    resolved = settings("train", config, model=config.model.name, dtype=config.model.dtype, seed=config.train.seed,
                        run_dir=str(run_dir), effective_batch=effective_batch(config.train))
    with TrainDisplay(console) as display:
        result = run_training(config, run_dir, loaded, tokenizer, resume=resume, on_event=display)
    last = final_eval(result.history)
    final = result.history[-1] if result.history else {}
    stdout().print(train_summary(result, run_dir, last))
    write_settings(run_dir, resolved)
    write_json(json_path, {"run_dir": str(run_dir), "steps": result.steps, "resumed_from": result.resumed_from,
                           "eval_nll": result.eval_nll, "base_eval_nll": last["base_eval_nll"] if last else None,
                           "final": final, "settings": resolved})


def effective_batch(train) -> int:
    """Examples behind one optimizer step: batch_size x gradient_accumulation_steps x processes."""
    import os

    return train.batch_size * train.gradient_accumulation_steps * int(os.environ.get("WORLD_SIZE", "1"))


def effective_batch_text(train) -> str:
    processes = effective_batch(train) // (train.batch_size * train.gradient_accumulation_steps)
    return (f"effective batch {effective_batch(train)} (batch {train.batch_size} x {train.gradient_accumulation_steps} "
            f"micro-batch{'es' if train.gradient_accumulation_steps > 1 else ''} x {processes} process{'es' if processes > 1 else ''})")


def write_settings(run_dir: Path, resolved: dict) -> None:
    """settings.json next to the run's results: what it ran with (the recipe after overrides, seed, versions)."""
    import json

    from tjdkit.cli.common import is_main_process
    from tjdkit.fileio import atomic_write_text

    if is_main_process():
        atomic_write_text(Path(run_dir) / "settings.json", json.dumps(resolved, indent=2, default=str) + "\n")


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Before anything slow: a new run needs a free, writable place; --resume needs a run there."""
    from tjdkit.errors import TjdkitError
    from tjdkit.fileio import check_output_dir
    from tjdkit.training.runs import is_run

    if is_run(run_dir) and not resume:
        raise TjdkitError(f"{run_dir} already holds a run: add --resume to continue it, or choose another --out")
    run_files = {"recipe.yaml", "metrics.jsonl", "best", "last", "settings.json", "tensorboard", "wandb"}  # a run killed before its first checkpoint has these
    if run_dir.is_dir() and any(p.name not in run_files and not p.name.startswith(".") for p in run_dir.iterdir()):
        raise TjdkitError(f"{run_dir} holds other files, not a run: choose an empty or new --out")
    check_output_dir(run_dir, force=True)


def _train_hyformer(recipe: str, out: Optional[Path], resume: bool, overrides: list[str], json_path: Optional[Path],
                    loop_flags: dict) -> None:
    from tjdkit.config import HyformerTrainRecipe
    from tjdkit.data.smiles import require_rdkit
    from tjdkit.recipes import find_recipe, load_recipe
    from tjdkit.training.loop import check_report_to

    config = load_recipe(recipe, HyformerTrainRecipe, overrides, loop_flags)
    check_report_to(config.train.report_to)
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
    console.print(f"[dim]{effective_batch_text(config.train)} · seed {config.train.seed}[/]")
    mixed = config.train.mixed_precision
    resolved = settings("train", config, model="hyformer", dtype="float32" if mixed == "no" else f"float32 weights, {mixed} compute", seed=seed_all(config.train.seed), run_dir=str(run_dir),
                        effective_batch=effective_batch(config.train))
    with TrainDisplay(console) as display:
        result = train_hyformer(config, run_dir, resume=resume, on_event=display)
    write_settings(run_dir, resolved)
    last = final_eval(result.history, "eval_loss") or result.last_eval
    final = result.history[-1] if result.history else {}
    stdout().print(hyformer_train_summary(result, run_dir, last))
    stdout().print(f"[dim]scores on the eval split; `tjdkit eval {run_dir} --dataset smiles` samples molecules and scores the test split[/]")
    write_json(json_path, {"run_dir": str(run_dir), "kind": "hyformer", "steps": result.steps, "resumed_from": result.resumed_from,
                           "params": result.params, "train_molecules": result.train_molecules, "best_eval_loss": result.best,
                           "eval": last, "final": final, "settings": resolved})
