"""Benchmark decoding: ar vs draft vs verify (and transformers' baselines), in one run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tjdkit.bench.modes import BENCH_MODES, DEFAULT_MODES, PLAIN
from tjdkit.cli.common import (
    JsonOpt,
    SeedOpt,
    check_outputs,
    load_model_with_progress,
    load_run_with_progress,
    quiet_libraries,
    seed_all,
    settings,
    stderr,
    stdout,
    write_json,
)

EXAMPLES = """Examples:

  tjdkit bench --head cp --horizon 4 --prompts 5 --max-new-tokens 64
  tjdkit bench --model tiny-llama --modes ar,lookup --json - > bench.json
"""



def bench(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model to benchmark (default: gemma3)."),
    head: str = typer.Option("cp", "--head", help="Joint head: cp, mps or multihead."),
    rank: int = typer.Option(4, "--rank", min=1, help="CP rank / MPS bond dimension."),
    horizon: int = typer.Option(4, "--horizon", min=2, max=16, help="Tokens the head predicts per step."),
    dataset: str = typer.Option("sharegpt", "--dataset", "-d",
                                help="Prompts (and the head's training data): sharegpt (chat) or stemp."),
    split: str = typer.Option("test", "--split", help="Which prompts: test (stemp also: mild, hard)."),
    prompts: Optional[int] = typer.Option(None, "--prompts", min=1,
                                          help="How many prompts (default: 5 of the dataset, all of --prompts-file)."),
    prompts_file: Optional[Path] = typer.Option(None, "--prompts-file",
                                                help="Your prompts instead of the dataset's: one per line, or JSONL with a \"prompt\" field."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", min=1, help="Tokens generated per prompt."),
    modes: str = typer.Option(",".join(DEFAULT_MODES), "--modes", help=f"Comma-separated: {', '.join(BENCH_MODES)}."),
    drafter: str = typer.Option("hybrid", "--drafter",
                                help="verify's drafts: hybrid (prompt lookup where the text repeats, else the head), head, lookup."),
    head_dir: Optional[Path] = typer.Option(None, "--head-dir", help="Use this trained run, head directory or hub id instead of the cached head."),
    dtype: Optional[str] = typer.Option(None, "--dtype",
                                        help="Weight formats timed side by side, comma-separated: float32, bfloat16, "
                                             "fp16-weights (default: float32,fp16-weights on a CPU, auto on a GPU)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw tokens/s and acceptance to this PNG."),
    card: bool = typer.Option(False, "--card", help="Write verify's measured tau and speed-ups into the head directory's model card."),
    seed: SeedOpt = None,
    json_path: JsonOpt = None,
) -> None:
    """Benchmark decoding: ar vs draft vs verify (and transformers' baselines), in one run.

    With no --head-dir, uses the cached head for (model, head, rank, horizon, dataset),
    training it once with the bench-<dataset> recipe when there is none.
    """
    from tjdkit.bench.modes import NEEDS_HEAD
    from tjdkit.bench.formats import load_dtype, parse_dtypes, weight_variants
    from tjdkit.data.sources import dataset_splits
    from tjdkit.data.splits import check_split
    from tjdkit.decoding import parse_modes
    from tjdkit.errors import TjdkitError
    from tjdkit.recipes import builtin_recipe_dir

    from tjdkit.decoding.drafters import DRAFTERS

    chosen = parse_modes(modes, BENCH_MODES, what="bench mode")
    if drafter not in DRAFTERS:
        raise TjdkitError(f"unknown --drafter {drafter!r} (use {', '.join(DRAFTERS)})")
    benchable = sorted(path.stem.removeprefix("bench-") for path in builtin_recipe_dir().glob("bench-*.yaml"))
    if dataset not in benchable:  # the datasets bench has a head recipe for
        raise TjdkitError(f"no bench recipe for dataset {dataset!r}: bench runs on {' or '.join(benchable)} prompts")
    check_split(dataset, split, dataset_splits(dataset))
    if head not in ("cp", "mps", "multihead"):
        raise TjdkitError(f"bench needs a multi-token head: cp, mps or multihead, not {head!r}")
    check_outputs(json_path, plot)
    if prompts_file is not None:
        from tjdkit.bench.run import read_prompts_file

        read_prompts_file(prompts_file)  # one clear line now, not after the model has loaded

    dtypes = parse_dtypes(dtype)
    quiet_libraries()
    seed = seed_all(seed)  # decoding is greedy; the seed fixes everything else (a head trained now, tiny models' weights)
    needs_head = any(mode in NEEDS_HEAD and not (mode == "verify" and drafter == "lookup") for mode in chosen)
    run_dir, trained = None, False
    if needs_head:
        run_dir, trained = _head_run(head_dir, model, head, rank, horizon, dataset)
        run = load_run_with_progress(run_dir, model, dtype=load_dtype(dtypes))
        loaded, tokenizer, joint_head, model_name = run.model, run.tokenizer, run.head, run.info["model"]
    else:
        model_name = model or "gemma3"
        loaded, tokenizer = load_model_with_progress(model_name, load_dtype(dtypes), seed=seed)
        joint_head = None
    first, variants = weight_variants(loaded, dtypes)
    _run_and_report(first, variants, tokenizer, joint_head, model_name, run_dir, trained, dataset, split, prompts,
                    prompts_file, chosen, max_new_tokens, plot, json_path, drafter, card=card, resolved=
                    settings("bench", None, model=model_name, dtype=dtypes, seed=seed, head=head if needs_head else None, rank=rank,
                             horizon=horizon, head_dir=str(run_dir) if run_dir is not None else None, dataset=dataset, split=split,
                             prompts=prompts, prompts_file=str(prompts_file) if prompts_file is not None else None,
                             max_new_tokens=max_new_tokens, modes=list(chosen), drafter=drafter, decoding="greedy"))


def _head_run(head_dir, model, head, rank, horizon, dataset):
    """-> (run dir, trained now): the run given with --head-dir, else the core's cached (or newly trained) head."""
    from tjdkit.bench import resolve_head_run
    from tjdkit.training.runs import checkpoint_dir
    from tjdkit.ui.bench import head_run_display

    if head_dir is not None:
        checkpoint_dir(head_dir)  # one clear line when it is not a run or head directory (a hub id downloads here)
        return head_dir, False
    model_name = model or "gemma3"
    with head_run_display(stderr()) as on_event:
        return resolve_head_run(model_name, head, rank, horizon, dataset,
                                loaded=lambda: load_model_with_progress(model_name), on_event=on_event)


def _record_on_card(run_dir, row: dict, measured_on: str) -> None:
    """verify's measured tau and speed-ups into the head directory's config.json and model card."""
    from tjdkit.heads.hub import is_head_dir, record_metrics
    from tjdkit.training.runs import checkpoint_dir

    directory = checkpoint_dir(run_dir)
    if not is_head_dir(directory):
        stderr().print(f"[yellow]--card: {directory} is not a head directory (a run from an older tjdkit); nothing written[/]")
        return
    metrics = {"tau": row.get("tau"), "speedup": row.get("speedup"), "speedup_vs_lookup": row.get("speedup_vs_lookup"),
               "tokens_per_second": row.get("tokens_per_second"), "measured_on": measured_on}
    record_metrics(directory, metrics)
    stdout().print(f"wrote tau {row.get('tau', float('nan')):.2f} and speed-up {row.get('speedup', float('nan')):.2f}x into {directory}/README.md")


def _run_and_report(model, variants, tokenizer, head, model_name, run_dir, trained, dataset, split, count, prompts_file, modes,
                    max_new_tokens, plot, json_path, drafter, resolved=None, card: bool = False) -> None:
    from tjdkit.bench import bench_prompts, environment, file_prompts, run_bench
    from tjdkit.ui.bench import bench_table, dtype_lines, parity_lines, save_plot
    from tjdkit.ui.progress import stage_bars

    if prompts_file is not None:
        prompts, source = file_prompts(tokenizer, prompts_file, count), str(prompts_file)
    else:
        from tjdkit.decoding import context_length

        room = (context_length(model) or 4096 + max_new_tokens) - max_new_tokens  # whole prompts that leave room to generate
        prompts, source = bench_prompts(tokenizer, dataset, split, count or 5, max_prompt_tokens=min(room, 4096)), f"{dataset}/{split}"
    with stage_bars(stderr(), elapsed=True) as on_progress:
        result = run_bench(model, tokenizer, head, prompts, modes, max_new_tokens, on_progress=on_progress, drafter=drafter,
                           variants=variants)

    env = environment(model)
    head_text = f"{head.name} head r{head.rank} H{head.horizon}" if head is not None else "no head"
    head_text += f" · {drafter} drafts" if "verify" in modes else ""
    def title(dtype_name: str) -> str:
        return (f"bench {model_name} · {head_text} · {source} · {len(prompts)} prompts x {max_new_tokens} "
                f"new tokens · greedy · {env['device']} {dtype_name}, {env['threads']} threads")

    out = stdout()
    by_dtype = result.get("by_dtype", {result["dtype"]: result})
    for dtype_name, dtype_result in by_dtype.items():
        out.print(bench_table(dtype_result, title(dtype_name)))
        for line in parity_lines(dtype_result):
            out.print(line)
    for line in dtype_lines(result):
        out.print(line)
    parity = {f"{dtype_name} {mode}": row for dtype_name, dtype_result in by_dtype.items()
              for mode, row in dtype_result.get("parity", {}).items()}
    lossless_ok = all(p["identical"] for p in parity.values() if p["lossless"]) if parity else None
    if parity:
        reference = " / ".join(sorted({r.get("parity_reference", "ar") for r in by_dtype.values() if r.get("parity")}))
        verdict = (f"[green]all lossless modes identical to {reference}[/]" if lossless_ok
                   else f"[red]a lossless mode differs from {reference}[/]")
        out.print(verdict)
    elif any(mode not in PLAIN for mode in result.get("modes", {})):
        out.print("[yellow]parity not checked: add ar or hf to --modes to compare the outputs with plain greedy decoding[/]")
    if plot is not None:
        save_plot(result, plot, title(env['dtype']))
        stderr().print(f"[dim]wrote {plot}[/]")
    if card and head is not None and "verify" in result.get("modes", {}):
        _record_on_card(run_dir, result["modes"]["verify"], f"tjdkit bench: {len(prompts)} prompts of {source} x "
                        f"{max_new_tokens} tokens, greedy, {drafter} drafts, {env['device']} {result['dtype']}, {env['threads']} threads")
    write_json(json_path, {
        "model": model_name,
        "head": {"run_dir": str(run_dir), "trained_now": trained, **head.config()} if head is not None else None,
        "dataset": dataset,  # the head's training data, and the prompts' unless prompts_file is set
        "split": split,
        "prompts_file": str(prompts_file) if prompts_file is not None else None,
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "decoding": "greedy",
        "drafter": drafter,  # verify's drafts
        "environment": env,
        "parity": lossless_ok,  # every lossless mode's output identical to plain greedy's (ar, else hf) in its format; None: not checked
        **{key: value for key, value in result.items() if key != "parity"},
        "parity_by_mode": result.get("parity", {}),
        "settings": resolved,
    })
