"""Factorise a model's attention (shared-factor Tucker or TPA), report the cost, save it."""

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

  tjdkit factorize gemma3 --rank auto --out gemma3-tucker
  tjdkit factorize gemma3 --method latent --heal 32768 --out gemma3-latent
  tjdkit factorize tiny-llama --method tpa --rank 2,1,1 --seed 1 --json -
"""

DEFAULT_RECIPES = {"tucker": "gemma3-tucker", "tpa": "gemma3-tpa", "latent": "gemma3-latent"}


def factorize(
    model: Optional[str] = typer.Argument(None, help="Model name, directory or .gguf file (default: the recipe's, gemma3)."),
    recipe: RecipeOpt = None,
    method: Optional[str] = typer.Option(None, "--method", help="tucker (TensorLLM), tpa (T6 tensor product attention) or latent (a smaller KV cache: partial-RoPE keys, low-rank values)."),
    rank: Optional[str] = typer.Option(
        None, "--rank", help="tucker: auto (smallest within --max-ppl-increase), energy, R_dmodel,R_headdim,R_role (e.g. 64,32,4) or a target like 2x; tpa: auto or R_q,R_k,R_v."
    ),
    energy: Optional[float] = typer.Option(
        None, "--energy", help="Ranks keeping this share of each spectrum's energy (tucker: implies --rank energy; tpa: --rank auto)."
    ),
    max_ppl_increase: Optional[float] = typer.Option(
        None, "--max-ppl-increase", help="tucker --rank auto: allowed perplexity increase in percent (default 1)."
    ),
    layers: Optional[str] = typer.Option(None, "--layers", help="all, a list like 0,5,11, or last:N."),
    calibration: Optional[str] = typer.Option(
        None, "--calibration", help="Text for activations: a dataset (sharegpt, stemp, gsm8k), a .txt file or the text."
    ),
    calibration_tokens: Optional[int] = typer.Option(None, "--calibration-tokens", help="Tokens of calibration text."),
    steps: Optional[int] = typer.Option(None, "--steps", help="tpa: refinement steps per layer (0: SVD init only)."),
    materialize: Optional[bool] = typer.Option(
        None, "--materialize/--factorized", help="tucker: write denoised dense weights instead of the factors."
    ),
    activation_aware: Optional[bool] = typer.Option(
        None, "--activation-aware/--data-free", help="tucker: weigh the decomposition by calibration activations."
    ),
    eval_tokens: Optional[int] = typer.Option(None, "--eval-tokens", help="Held-out tokens for perplexity (0 skips it)."),
    heal_tokens: Optional[int] = typer.Option(
        None, "--heal", help="Then distil the original model into the factors on this many calibration tokens (0: no healing)."
    ),
    heal_dir: Optional[Path] = typer.Option(None, "--heal-dir", help="Healing checkpoints and metrics (default: OUT.heal, or runs/heal)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the healing run in --heal-dir from its last checkpoint."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Save the factorized model to this directory."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Draw the singular-value spectra with the chosen ranks to this PNG."),
    json_path: JsonOpt = None,
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto, float32, bfloat16 or float16."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps."),
    seed: SeedOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Factorise a model's attention (shared-factor Tucker or TPA), report the cost, save it.

    Prints per-layer ranks, parameters, compression, reconstruction error (and KV-cache
    bytes for TPA), with perplexity before and after on a fixed held-out text.
    """
    from tjdkit.config import FactorizeRecipe
    from tjdkit.errors import TjdkitError
    from tjdkit.factorize.convert import METHODS, factorize_model
    from tjdkit.fileio import check_output_dir
    from tjdkit.recipes import load_recipe

    if method is not None and method not in METHODS:
        raise TjdkitError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    check_outputs(json_path, plot)
    out = nonempty_path(out, "--out")
    flags = {
        "model.name": model,
        "model.dtype": dtype,
        "model.device": device,
        "factorize.method": method,
        "factorize.rank": rank if rank is not None or energy is None or method == "tpa" else "energy",
        "factorize.energy": energy,
        "factorize.max_ppl_increase": max_ppl_increase,
        "factorize.layers": layers,
        "factorize.calibration": calibration,
        "factorize.calibration_tokens": calibration_tokens,
        "factorize.steps": steps,
        "factorize.materialize": materialize,
        "factorize.activation_aware": activation_aware,
        "factorize.eval_tokens": eval_tokens,
        "out": str(out) if out is not None else None,
        "heal.tokens": heal_tokens,
        "heal.run_dir": str(heal_dir) if heal_dir is not None else None,
    }
    config = load_recipe(recipe or DEFAULT_RECIPES[method or "tucker"], FactorizeRecipe, overrides or [], flags)
    section = config.factorize
    if section.method != "tucker" and section.materialize:
        raise TjdkitError(f"--materialize is for --method tucker ({section.method} changes the attention's form)")
    out_dir = Path(config.out).expanduser() if config.out else None
    if out_dir is not None:
        check_output_dir(out_dir, force)  # before anything slow
    healing = config.heal.tokens > 0
    heal_run = Path(config.heal.run_dir or (f"{out_dir}.heal" if out_dir is not None else "runs/heal")).expanduser()
    if healing and section.materialize:
        raise TjdkitError("--heal trains the factors: it cannot follow --materialize (heal, then materialize is not offered)")
    if resume:
        from tjdkit.training.loop import resume_dir

        if not healing:
            raise TjdkitError("--resume continues a healing run: give --heal TOKENS too")
        resume_dir(heal_run)  # fails fast when there is nothing to resume

    quiet_libraries()
    console = stderr()
    seed = seed_all(seed)  # calibration text sampling and TPA's refinement
    loaded, tokenizer = load_model_with_progress(config.model.name, config.model.dtype, config.model.device, seed=seed)
    if out_dir is not None:  # the saved model is at most about the dense one's size
        check_output_dir(out_dir, force, need_bytes=sum(p.numel() * p.element_size() for p in loaded.parameters()))
    from tjdkit.ui.factorize import budget_line, heal_line, layer_line, notes, perplexity_line, report_table, save_spectra_plot
    from tjdkit.ui.progress import stage_display

    def on_layer(row, done, total):
        console.print(f"[dim]{layer_line(row, done, total)}[/]")

    title = f"tjdkit factorize {config.model.name} · {section.method} · rank {section.rank}"
    teacher = None
    if healing:
        import copy

        teacher = copy.deepcopy(loaded)  # the original model, the teacher healing distils from
    with stage_display(console, f"Factorizing {config.model.name}") as on_stage:
        report = factorize_model(loaded, tokenizer, section, name=config.model.name, on_layer=on_layer, on_stage=on_stage)
    if teacher is not None:
        from tjdkit.training.heal import heal_factorized

        with stage_display(console, "Healing") as on_stage:
            def on_event(event):
                if event.get("kind") == "step":
                    on_stage(f"step {event['step']}/{event['total']}, KL {event['loss']:.4f}")

            heal_factorized(report, loaded, teacher, tokenizer, config.heal, heal_run, seed=seed, resume=resume, on_event=on_event)
        del teacher
    printer = stdout()
    printer.print(report_table(report, title))
    printer.print(perplexity_line(report))
    for line in (budget_line(report), heal_line(report)):
        if line:
            printer.print(line)
    printer.print(f"factorized {len(report.layers)} layers in {report.seconds:.1f} s")
    for line in notes(report):
        printer.print(f"[yellow]{line}[/]")
    result = report.to_dict()
    if plot is not None:
        save_spectra_plot(report, plot, title)
        console.print(f"[dim]wrote {plot}[/]")
    if out_dir is not None:
        from tjdkit.factorize.saving import save_factorized

        with stage_display(console, f"Saving to {out_dir}"):
            save_factorized(loaded, tokenizer, out_dir, report.metadata(), force=True, report=result)
        printer.print(f"saved to {out_dir} (open it with `tjdkit chat --model {out_dir}`)")
    write_json(json_path, {**result, "settings": settings("factorize", config, model=config.model.name, dtype=config.model.dtype,
                                                          seed=seed)})
