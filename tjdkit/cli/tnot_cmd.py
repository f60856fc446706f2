"""Test-time optimisation (SLOT delta + entropy-triggered reflection) on prompts or a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from tjdkit.cli.common import (
    JsonOpt,
    RecipeOpt,
    SeedOpt,
    SetOpt,
    check_outputs,
    check_text,
    fresh_seed,
    load_model_with_progress,
    quiet_libraries,
    read_stdin_text,
    seed_all,
    settings as command_settings,
    stderr,
    stdout,
    write_json,
)

EXAMPLES = """Examples:

  tjdkit tnot "What is 3 C in F?" --steps 3
  tjdkit tnot --dataset capitals --limit 20 --compare --seed 1 --json -
"""


def tnot(
    prompts: Optional[List[str]] = typer.Argument(None, help="Prompts to answer ('-' reads one from stdin)."),
    recipe: RecipeOpt = None,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name, directory, .gguf file or hub id."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Prompts from a dataset: capitals or stemp (offline), gsm8k (hub)."),
    split: Optional[str] = typer.Option(None, "--split", help="Dataset split (default: test)."),
    limit: Optional[int] = typer.Option(None, "--limit", "-l", help="How many dataset prompts (default: 20)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="AdamW steps on the delta (prompt and each reflection)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate of the delta (default: 0.1)."),
    entropy_weight: Optional[float] = typer.Option(None, "--entropy-weight", help="w in (1-w)*CE + w*entropy."),
    entropy_threshold: Optional[float] = typer.Option(None, "--entropy-threshold", help="Static trigger, nats (default: 3)."),
    adaptive: Optional[bool] = typer.Option(None, "--adaptive/--static", help="max(mean + k*max(std,0.5), 1.8) over a window."),
    window: Optional[int] = typer.Option(None, "--window", help="Adaptive window N (default: 20)."),
    k: Optional[float] = typer.Option(None, "--k", help="Adaptive multiplier K (default: 2)."),
    max_retries: Optional[int] = typer.Option(None, "--max-retries", help="Reflections per response (default: 5)."),
    entropy_control: Optional[bool] = typer.Option(None, "--entropy-control/--no-entropy-control", help="The entropy trigger."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", "-n", help="Longest response, in tokens."),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t", help="0 for greedy decoding [default]."),
    seed: SeedOpt = None,
    compare: bool = typer.Option(False, "--compare", help="Also run the plain model on the same prompts: accuracy (with a 95% CI of the difference) and latency."),
    record: Optional[Path] = typer.Option(None, "--record", help="Write one JSON line per generated token here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Draw the entropy traces to this PNG."),
    show: int = typer.Option(3, "--show", min=0, help="Dataset runs: how many traces to print."),
    json_path: JsonOpt = None,
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto, float32, bfloat16 or float16."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps."),
    overrides: SetOpt = None,
) -> None:
    """Test-time optimisation (SLOT delta + entropy-triggered reflection) on prompts or a dataset.

    Prints each response coloured by token entropy with reflections marked, a sparkline of
    entropy against the threshold, and with --compare accuracy and latency beside the plain model.
    """
    from tjdkit.config import TnotRecipe
    from tjdkit.errors import TjdkitError
    from tjdkit.recipes import load_recipe

    texts = [read_stdin_text() if text == "-" else check_text(text) for text in (prompts or [])]
    if any(not text.strip() for text in texts):
        raise TjdkitError("empty prompt")
    if texts and dataset:
        raise TjdkitError("give prompts or --dataset, not both")
    check_outputs(json_path, plot, record)
    flags = {
        "model.name": model, "model.dtype": dtype, "model.device": device,
        "generation.max_new_tokens": max_new_tokens, "generation.temperature": temperature, "generation.seed": seed,
        "prompts.dataset": dataset, "prompts.split": split, "prompts.limit": limit,
        "tnot.steps": steps, "tnot.lr": lr, "tnot.entropy_weight": entropy_weight,
        "tnot.entropy_threshold": entropy_threshold, "tnot.adaptive": adaptive, "tnot.window": window, "tnot.k": k,
        "tnot.max_retries": max_retries, "tnot.entropy_control": entropy_control,
    }
    config = load_recipe(recipe or "tnot", TnotRecipe, overrides or [], flags)
    import dataclasses

    # No --seed: a fresh one, recorded in the settings, so the run can be repeated.
    config = dataclasses.replace(config, generation=dataclasses.replace(config.generation, seed=fresh_seed(config.generation.seed)))
    from tjdkit.tnot.run import sweep_configs

    settings = sweep_configs(config)  # checked before anything slow is loaded
    if not texts and config.prompts.dataset is None:
        raise TjdkitError("give a prompt (tjdkit tnot \"What is 3 C in F?\") or --dataset capitals|stemp|gsm8k")
    if not texts:
        from tjdkit.data.sources import dataset_splits
        from tjdkit.data.splits import check_split

        check_split(config.prompts.dataset, config.prompts.split, dataset_splits(config.prompts.dataset))

    quiet_libraries()
    seed_all(config.generation.seed)
    loaded, tokenizer = load_model_with_progress(config.model.name, config.model.dtype, config.model.device)
    _run_and_report(loaded, tokenizer, config, settings, texts, compare or len(settings) > 1, record, plot, show, json_path)


def _run_and_report(model, tokenizer, config, settings, texts, compare, record, plot, show, json_path) -> None:
    from tjdkit.models.prompts import stop_token_ids
    from tjdkit.recipes import to_mapping
    from tjdkit.tnot.records import record_lines
    from tjdkit.tnot.run import prompt_items, run_settings, sweep_rows
    from tjdkit.ui.tnot import compare_table, save_trace_plot, tnot_progress

    items = prompt_items(tokenizer, texts, config.prompts, config.model.name)
    console, out = stderr(), stdout()
    source = f"{config.prompts.dataset}/{config.prompts.split}" if not texts else f"{len(items)} prompt(s)"
    shown = len(items) if texts else show
    with tnot_progress(console, out, f"TNOT on {source}", len(items), shown, tokenizer) as (on_token, on_done):
        results = run_settings(model, tokenizer, items, settings, config.generation, compare=compare,
                               eos_token_ids=stop_token_ids(tokenizer, model), on_token=on_token, on_done=on_done)
    result = results["tnot"]
    base = config.tnot
    trigger = f"adaptive (N={base.window}, K={base.k:g})" if base.adaptive else f"threshold {base.entropy_threshold:g}"
    title = (f"tnot {config.model.name} · {source} · steps {base.steps} · lr {base.lr:g} · "
             f"{trigger if base.entropy_control else 'no entropy control'} · max retries {base.max_retries}")
    if len(settings) > 1:
        title += f" · sweep of {len(settings)} settings"
    out.print(compare_table(sweep_rows(results) if len(settings) > 1 else result.rows(), title))
    if record is not None:
        from tjdkit.fileio import atomic_write_text

        lines = record_lines([run.tnot for run in result.runs], tokenizer, range(len(result.runs)))
        atomic_write_text(record, "".join(line + "\n" for line in lines))
        console.print(f"[dim]wrote {record} ({len(lines)} tokens)[/]")
    if plot is not None:
        save_trace_plot([(run.item.label.strip(), run.tnot.records) for run in result.runs], plot, title)
        console.print(f"[dim]wrote {plot}[/]")
    sweep = {"sweep": sweep_rows(results)} if len(settings) > 1 else {}
    resolved = command_settings("tnot", config, model=config.model.name, dtype=config.model.dtype, seed=config.generation.seed)
    write_json(json_path, {"model": config.model.name, "recipe": to_mapping(config), **result.to_dict(), **sweep, "settings": resolved})
