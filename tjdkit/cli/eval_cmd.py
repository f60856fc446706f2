"""Evaluate a trained run or a plain model: accuracy, per-token NLL, draft acceptance; a Hyformer: molecules and TPSA."""

from __future__ import annotations

from typing import Optional

import typer

from tjdkit.cli.common import (
    JsonOpt,
    check_outputs,
    load_model_with_progress,
    quiet_libraries,
    seed_all,
    settings,
    stderr,
    stdout,
    write_json,
)

EXAMPLES = """Examples:

  tjdkit eval runs/stemp-cp --dataset stemp --limit 100
  tjdkit eval tiny-llama --limit 3 --max-new-tokens 16 --json - | jq .modes
"""


def evaluate(
    target: str = typer.Argument(..., help="A run directory (tjdkit train) or any model name/path."),
    dataset: str = typer.Option("stemp", "--dataset", "-d", help="stemp, sharegpt, gsm8k or smiles (a Hyformer)."),
    limit: Optional[int] = typer.Option(
        None, "--limit", "-l", min=1, help="How many examples (default 100; smiles: the whole held-out split)."
    ),
    split: str = typer.Option("test", "--split", help="test, eval (stemp also: mild, hard)."),
    modes: Optional[str] = typer.Option(
        None, "--modes", help="Decoding modes: ar, draft, verify (default: all three for a run, ar for a plain model)."
    ),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", min=1, help="Longest answer, in tokens."),
    samples: int = typer.Option(1000, "--samples", min=0, help="smiles: molecules to sample for validity, uniqueness, novelty."),
    temperature: float = typer.Option(1.0, "--temperature", min=0.0, help="smiles: sampling temperature (0: greedy)."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**63 - 1, help="Seed for Python, numpy and torch (smiles: the sampling seed)."),
    json_path: JsonOpt = None,
) -> None:
    """Evaluate a trained run or a plain model: accuracy, per-token NLL, draft acceptance. A Hyformer
    (--dataset smiles): validity, uniqueness and novelty of sampled molecules, TPSA RMSE and R²."""
    import math

    from tjdkit.data.sources import dataset_splits
    from tjdkit.data.splits import check_split
    from tjdkit.decoding import HEAD_MODES, MODES, parse_modes
    from tjdkit.errors import TjdkitError
    from tjdkit.evaluation import evaluate as run_evaluation
    from tjdkit.training.runs import is_hyformer
    from tjdkit.training.runs import checkpoint_dir, is_run, load_run, read_checkpoint
    from tjdkit.ui.evaluation import head_eval_report
    from tjdkit.ui.progress import stage_bars

    check_outputs(json_path)
    seed_all(seed)
    if not math.isfinite(temperature):
        raise TjdkitError(f"--temperature must be a finite number >= 0, got {temperature}")
    if is_hyformer(target):
        if dataset != "smiles":
            raise TjdkitError(f"{target} is a Hyformer: it reads SMILES (use --dataset smiles)")
        if modes is not None:
            raise TjdkitError("--modes applies to joint heads; a Hyformer is scored by sampling molecules and predicting TPSA")
        check_split(dataset, split, dataset_splits(dataset))
        resolved = settings("eval", None, target=target, model=target, dtype="auto", seed=seed, dataset=dataset, split=split,
                            limit=limit, samples=samples, temperature=temperature)
        return _evaluate_hyformer(target, split, limit, samples, temperature, seed, json_path, resolved)
    base_model = read_checkpoint(checkpoint_dir(target))["model"] if is_run(target) else target
    if dataset == "smiles" and not is_hyformer(base_model):  # SMILES text means something only to a Hyformer
        kind = "a joint-head run on a model that is not a Hyformer" if is_run(target) else "not a Hyformer"
        raise TjdkitError(
            f"--dataset smiles scores a Hyformer (sampled molecules, TPSA) or a joint head on one; {target} is {kind}: "
            "evaluate it on stemp, sharegpt or gsm8k"
        )
    limit = limit or 100
    chosen = parse_modes(MODES if modes is None else modes, MODES, what="mode")
    check_split(dataset, split, dataset_splits(dataset))
    quiet_libraries()
    head = None
    if is_run(target):
        run = load_run(target)
        model, tokenizer, head = run.model, run.tokenizer, run.head
        label = f"{target} ({run.info['head']['name']} head on {run.info['model']})"
        model_name = run.info["model"]
    else:
        with_head = [mode for mode in chosen if mode in HEAD_MODES]
        if modes is None:
            chosen = ("ar",)
        elif with_head:
            raise TjdkitError(
                f"{with_head[0]} decoding needs a trained head: '{target}' is a plain model (pass a run directory)"
            )
        model, tokenizer = load_model_with_progress(target, seed=seed)
        label = model_name = target
    with stage_bars(stderr(), suffix=" decoding") as on_progress:
        result = run_evaluation(model, tokenizer, head, dataset, limit, chosen, max_new_tokens, split, on_progress)
    out = stdout()
    for part in head_eval_report(result, label, dataset, split):
        out.print(part)
    resolved = settings("eval", None, target=target, model=model_name, dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
                        seed=seed, dataset=dataset, split=split, limit=limit, modes=list(chosen), max_new_tokens=max_new_tokens,
                        decoding="greedy")
    write_json(json_path, {"target": target, **result, "settings": resolved})


def _evaluate_hyformer(target: str, split: str, limit: Optional[int], samples: int, temperature: float, seed: int,
                       json_path, resolved: dict) -> None:
    from tjdkit.data.smiles import require_rdkit
    from tjdkit.evaluation.molecules import evaluate_smiles
    from tjdkit.training.runs import hyformer_model_path
    from tjdkit.ui.evaluation import hyformer_eval_report
    from tjdkit.ui.progress import stage_bars

    require_rdkit()
    model, tokenizer = load_model_with_progress(hyformer_model_path(target))
    with stage_bars(stderr()) as on_progress:
        result = evaluate_smiles(model, tokenizer, samples, temperature, seed=seed, split=split, limit=limit, on_progress=on_progress)
    out = stdout()
    for part in hyformer_eval_report(result, target, split, temperature, seed):
        out.print(part)
    write_json(json_path, {"target": target, **result, "settings": resolved})
