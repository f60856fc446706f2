"""Scores for Hyformer: generated molecules (validity, uniqueness, novelty) and TPSA regression.

Molecules are compared by RDKit's canonical SMILES, so "OCC" and "CCO" count as one.
The regression scores come with those of a constant baseline (the training mean), the
floor any useful predictor must beat.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

from tjdkit.data.smiles import require_rdkit
from tjdkit.errors import TjdkitError


def canonical_smiles(text: str) -> Optional[str]:
    """RDKit's canonical form, or None for empty or unparsable text."""
    Chem = require_rdkit().Chem
    molecule = Chem.MolFromSmiles(text) if text else None
    if molecule is None or molecule.GetNumAtoms() == 0:
        return None
    return Chem.MolToSmiles(molecule)


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def generation_quality(samples: list[str], training_smiles: Iterable[str], examples: int = 0) -> dict:
    """Counts and rates: validity = valid/total, uniqueness = unique/valid, novelty = novel/unique.

    unique counts distinct canonical forms among the valid samples; novel, those of them
    not in the training set. With `examples`, also the first that many novel samples as
    written (one per canonical form, in sample order), so callers need not parse again.
    """
    canonical = [canonical_smiles(sample) for sample in samples]
    valid = [form for form in canonical if form is not None]
    unique = set(valid)
    known = {canonical_smiles(smiles) for smiles in training_smiles} - {None}
    novel = unique - known
    quality = {
        "total": len(samples),
        "valid": len(valid),
        "unique": len(unique),
        "novel": len(novel),
        "validity": _rate(len(valid), len(samples)),
        "uniqueness": _rate(len(unique), len(valid)),
        "novelty": _rate(len(novel), len(unique)),
    }
    if examples > 0:
        shown: dict[str, str] = {}
        for sample, form in zip(samples, canonical):
            if form in novel and form not in shown and len(shown) < examples:
                shown[form] = sample
        quality["examples"] = list(shown.values())
    return quality


def _errors(predictions: list[float], targets: list[float]) -> tuple[float, float, float]:
    n = len(targets)
    mean = sum(targets) / n
    ss_res = sum((p - t) ** 2 for p, t in zip(predictions, targets))
    ss_tot = sum((t - mean) ** 2 for t in targets)
    # Constant targets: R² is 1 for a perfect fit and 0 otherwise (sklearn's convention).
    r2 = 1 - ss_res / ss_tot if ss_tot else (1.0 if ss_res == 0 else 0.0)
    mae = sum(abs(p - t) for p, t in zip(predictions, targets)) / n
    return math.sqrt(ss_res / n), mae, r2


def regression_quality(predictions: Iterable[float], targets: Iterable[float], baseline: float) -> dict:
    """rmse, mae and r2 of the predictions and of always predicting `baseline`, plus n."""
    predictions = [float(p) for p in predictions]
    targets = [float(t) for t in targets]
    if len(predictions) != len(targets):
        raise TjdkitError(f"{len(predictions)} predictions for {len(targets)} targets")
    if not targets:
        raise TjdkitError("regression_quality needs at least one target")
    rmse, mae, r2 = _errors(predictions, targets)
    base_rmse, base_mae, base_r2 = _errors([float(baseline)] * len(targets), targets)
    return {
        "n": len(targets),
        "rmse": rmse,
        "mae": mae,
        "r2": r2,
        "baseline_rmse": base_rmse,
        "baseline_mae": base_mae,
        "baseline_r2": base_r2,
    }
