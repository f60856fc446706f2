"""Live display for `tjdkit train`: one bar per stage, loss, tokens/s and ETA."""

from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

STAGES = {"features": "backbone features", "distill": "self-distilling", "step": "training"}


class TrainDisplay:
    """Feed it train()'s events. Off a terminal it prints a plain line at each evaluation."""

    def __init__(self, console: Console):
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> "TrainDisplay":
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.progress.stop()

    def __call__(self, event: dict) -> None:
        kind = event["kind"]
        if kind == "resume":
            self.console.print(f"[dim]resuming from step {event['step']}[/]")
            return
        done = event.get("step", event.get("done"))
        total = event["total"]
        info = _info(event)
        if not self.live:
            if "eval_nll" in event or "eval_loss" in event or done == total:
                self.console.print(f"{STAGES[kind]} {done}/{total} {info}")
            return
        if kind not in self.tasks:
            self.tasks[kind] = self.progress.add_task(STAGES[kind], total=total, completed=0, info="")
        self.progress.update(self.tasks[kind], completed=done, info=info)


def _info(event: dict) -> str:
    if event["kind"] != "step":
        return ""
    task = f" ({event['task']})" if "task" in event else ""
    parts = [f"loss {event['loss']:.3f}{task}", f"{event['tokens_per_second']:.0f} tok/s"]
    if "eval_nll" in event:
        parts.append(f"eval {event['eval_nll']:.3f} (base {event['base_eval_nll']:.3f}) nats/token")
    if "eval_loss" in event:
        parts.append(hyformer_eval_text(event))
    return " · ".join(parts)


def hyformer_eval_text(record: dict) -> str:
    """A Hyformer evaluation in one line: task losses, TPSA fit, validity of sampled molecules."""
    text = (
        f"eval {record['eval_loss']:.3f} · LM {record['eval_lm_nll']:.3f} · MLM {record['eval_mlm_nll']:.3f} nats/token · "
        f"TPSA RMSE {record['eval_tpsa_rmse']:.1f} R² {record['eval_tpsa_r2']:.3f}"
    )
    if "eval_validity" in record:
        text += f" · valid {record['eval_validity']:.0%}"
    return text


def final_eval(history: list[dict], key: str = "eval_nll") -> Optional[dict]:
    evaluated = [record for record in history if key in record]
    return evaluated[-1] if evaluated else None


def train_summary(result, run_dir, last: Optional[dict]) -> Table:
    """A joint-head run in one row: steps, final loss, the head's and (from `last`, its final evaluation)
    the base model's eval NLL, speed."""
    table = Table(title=f"run {run_dir}")
    for column in ("steps", "final loss", "head NLL/token", "base NLL/token", "tokens/s"):
        table.add_column(column, justify="right")
    final = result.history[-1] if result.history else {}
    table.add_row(
        str(result.steps),
        f"{final.get('loss', float('nan')):.4f}",
        f"{result.eval_nll:.4f}" if result.eval_nll is not None else "-",
        f"{last['base_eval_nll']:.4f}" if last else "-",
        f"{final.get('tokens_per_second', 0):.0f}",
    )
    return table


def hyformer_train_summary(result, run_dir, last: Optional[dict]) -> Table:
    """A Hyformer run in one row: losses, TPSA fit and validity from `last` (its final evaluation)."""
    final = result.history[-1] if result.history else {}
    table = Table(title=f"run {run_dir} ({result.params:,} parameters, {result.train_molecules} training molecules)")
    columns = ("steps", "final loss", "LM NLL/token", "MLM NLL/token", "TPSA RMSE (Å²)", "TPSA R²", "valid", "tokens/s")
    for column in columns:
        table.add_column(column, justify="right")

    def cell(key: str, spec: str) -> str:
        return format(last[key], spec) if last and key in last else "-"

    table.add_row(
        str(result.steps), f"{final.get('loss', float('nan')):.4f}", cell("eval_lm_nll", ".4f"), cell("eval_mlm_nll", ".4f"),
        cell("eval_tpsa_rmse", ".2f"), cell("eval_tpsa_r2", ".3f"), cell("eval_validity", ".0%"),
        f"{final.get('tokens_per_second', 0):.0f}",
    )
    return table
