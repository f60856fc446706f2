"""`tjdkit eval RUN --dataset smiles`: a Hyformer as a generator and as a predictor.

Generation: N molecules sampled from the `lm` task token, judged by RDKit (validity),
by their canonical forms (uniqueness) and against the training split (novelty).
Prediction: TPSA on a held-out split, RMSE and R^2 beside the constant that predicts the
training mean, the floor a useful model must beat.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from tjdkit.errors import TjdkitError

Progress = Optional[Callable[[str, int, int], None]]


def is_hyformer(target: str) -> bool:
    """A Hyformer run directory, a saved Hyformer or the tiny-hyformer preset."""
    from tjdkit.runs import CHECKPOINT, checkpoint_dir, is_run

    if target == "tiny-hyformer":
        return True
    path = Path(target).expanduser()
    if is_run(path):
        return _json_field(checkpoint_dir(path) / CHECKPOINT, "kind") == "hyformer"
    return _json_field(path / "config.json", "model_type") == "hyformer"


def _json_field(path: Path, key: str):
    """One field of a JSON file, or None when the file is missing or not JSON (the caller's loader reports that)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data.get(key) if isinstance(data, dict) else None


def hyformer_model_path(target: str) -> str:
    """What load_model takes: a run's best (else last) checkpoint directory, or the target itself."""
    from tjdkit.runs import checkpoint_dir, is_run

    return str(checkpoint_dir(target)) if is_run(target) else target


def evaluate_smiles(
    model,
    tokenizer,
    samples: int = 1000,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: int = 0,
    split: str = "test",
    limit: Optional[int] = None,
    on_progress: Progress = None,
) -> dict:
    """Generation quality of `samples` sampled molecules; TPSA prediction and LM/MLM NLL on `split`."""
    from tjdkit.data.smiles import smiles_split
    from tjdkit.data.smiles_metrics import generation_quality, regression_quality
    from tjdkit.train_hyformer import held_out_scores, sample_smiles

    if samples < 0:
        raise TjdkitError(f"--samples must be >= 0, got {samples}")
    report = on_progress or (lambda _stage, _done, _total: None)
    train = smiles_split("train")
    held_out = smiles_split(split, limit)
    training_smiles = [m.smiles for m in train]
    result: dict = {"dataset": "smiles", "split": split, "held_out": len(held_out)}

    sampled = sample_smiles(model, tokenizer, samples, seed=seed, temperature=temperature, top_k=top_k, top_p=top_p,
                            on_progress=lambda done, total: report("sampling", done, total)) if samples else []
    quality = generation_quality(sampled, training_smiles, examples=8)
    result["generation"] = {**quality, "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}

    scores = held_out_scores(model, tokenizer, held_out, mask_fraction=0.15)
    report("prediction", len(held_out), len(held_out))
    result["prediction"] = None  # a Hyformer built without a prediction head
    if scores.predictions:
        baseline = float(model.config.prediction_mean[0]) if model.config.prediction_mean else sum(m.tpsa for m in train) / len(train)
        quality = regression_quality(scores.predictions, [m.tpsa for m in held_out], baseline)
        result["prediction"] = {**quality, "baseline": baseline}
    result["nll"] = {"lm": scores.losses["lm"], "mlm": scores.losses["mlm"]}
    return result

