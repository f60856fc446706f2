"""Evaluate a trained run or a plain model: accuracy, per-token NLL, draft acceptance."""

from __future__ import annotations

from typing import Optional

import typer

from tjdkit.cli.common import JsonOpt, load_model_with_progress, quiet_libraries, stderr, stdout, write_json


def evaluate(
    target: str = typer.Argument(..., help="A run directory (tjdkit train) or any model name/path."),
    dataset: str = typer.Option("stemp", "--dataset", "-d", help="stemp, sharegpt or gsm8k."),
    limit: int = typer.Option(100, "--limit", "-n", min=1, help="How many examples."),
    split: str = typer.Option("test", "--split", help="test, eval (stemp also: mild, hard)."),
    modes: Optional[str] = typer.Option(
        None, "--modes", help="Decoding modes: ar, draft, verify (default: all three for a run, ar for a plain model)."
    ),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1),
    json_path: JsonOpt = None,
) -> None:
    """Evaluate a trained run or a plain model: accuracy, per-token NLL, draft acceptance."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    from tjdkit.data.sources import dataset_splits
    from tjdkit.decoding import HEAD_MODES, MODES
    from tjdkit.errors import TjdkitError
    from tjdkit.evaluate import evaluate as run_evaluation
    from tjdkit.runs import is_run, load_run

    chosen = tuple(mode.strip() for mode in (modes or ",".join(MODES)).split(",") if mode.strip())
    unknown = [mode for mode in chosen if mode not in MODES]
    if unknown or not chosen:
        raise TjdkitError(f"unknown mode '{','.join(unknown) or modes}' (use {', '.join(MODES)})")
    if split not in dataset_splits(dataset):
        raise TjdkitError(f"unknown split '{split}' for {dataset} (known: {', '.join(dataset_splits(dataset))})")
    quiet_libraries()
    head = None
    if is_run(target):
        run = load_run(target)
        model, tokenizer, head = run.model, run.tokenizer, run.head
        label = f"{target} ({run.info['head']['name']} head on {run.info['model']})"
    else:
        with_head = [mode for mode in chosen if mode in HEAD_MODES]
        if modes is None:
            chosen = ("ar",)
        elif with_head:
            raise TjdkitError(
                f"{with_head[0]} decoding needs a trained head: '{target}' is a plain model (pass a run directory)"
            )
        model, tokenizer = load_model_with_progress(target)
        label = target
    console = stderr()
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    )
    tasks: dict[str, int] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(f"{stage} decoding", total=total)
        progress.update(tasks[stage], completed=done)

    with progress:
        result = run_evaluation(model, tokenizer, head, dataset, limit, chosen, max_new_tokens, split, on_progress)

    table = Table(title=f"eval {label} on {dataset}/{split} ({result['examples']} examples)")
    for column in ("mode", "accuracy", "tokens/forward", "tau", "tokens/s"):
        table.add_column(column, justify="right")
    for mode, row in result["modes"].items():
        accuracy = f"{row['accuracy']:.1%}" if row["accuracy"] is not None else "-"
        tau = f"{row['tau']:.2f}" if "tau" in row else "-"
        table.add_row(mode, accuracy, f"{row['tokens_per_forward']:.2f}", tau, f"{row['tokens_per_second']:.1f}")
    console = stdout()
    console.print(table)
    nll = result["nll"]
    head_part = f"head {nll['head']:.4f} · " if "head" in nll else ""
    console.print(f"NLL per token: {head_part}base {nll['base']:.4f}")
    if "acceptance" in result:
        acc = result["acceptance"]
        by_position = " ".join(f"{p:.2f}" for p in acc["by_position"])
        console.print(
            f"verify acceptance (greedy, along the model's own output): {acc['mean_accepted']:.2f} drafts accepted + 1 "
            f"= tau {acc['tau']:.2f} tokens per verify forward; acceptance by draft position: {by_position}"
        )
    write_json(json_path, {"target": target, **result})
