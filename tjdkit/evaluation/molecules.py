"""`tjdkit eval RUN --dataset smiles`: a Hyformer as a generator and as a predictor.

Generation: N molecules sampled from the `lm` task token, judged by RDKit (validity),
by their canonical forms (uniqueness) and against the training split (novelty).
Prediction: TPSA on a held-out split, RMSE and R^2 beside the constant that predicts the
training mean, the floor a useful model must beat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from tjdkit.data.smiles import Molecule
from tjdkit.errors import TjdkitError
from tjdkit.models.hyformer.masking import mask_tokens, regular_ids

Progress = Optional[Callable[[str, int, int], None]]
EVAL_BATCH = 128


@dataclass
class HeldOut:
    losses: dict[str, float]  # lm, mlm: nats per token; prediction: MSE of the standardised targets
    predictions: list[float]  # TPSA in Å², one per molecule


@torch.no_grad()
def held_out_scores(model, tokenizer, molecules: list[Molecule], mask_fraction: float) -> HeldOut:
    """Every task's loss on `molecules` (the same MLM masks at every call) and the TPSA predictions,
    through the model's own losses, weighted by what each batch counts."""
    from tjdkit.models.hyformer.tokenizer import encode_smiles

    device = next(model.parameters()).device
    max_len = model.config.max_seq_len
    generator = torch.Generator().manual_seed(0)
    regular = regular_ids(tokenizer)
    sums = {"lm": 0.0, "mlm": 0.0, "prediction": 0.0}
    counts = {"lm": 0, "mlm": 0, "prediction": 0}
    predictions: list[float] = []
    for start in range(0, len(molecules), EVAL_BATCH):
        chunk = molecules[start : start + EVAL_BATCH]
        smiles = [m.smiles for m in chunk]

        ids, mask = (t.to(device) for t in encode_smiles(tokenizer, smiles, "lm", max_len))
        counted = int(mask[:, 1:].sum())  # every real token after the task token is predicted
        out = model(ids, task="lm", attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
        sums["lm"] += out.loss.item() * counted
        counts["lm"] += counted

        ids, mask = encode_smiles(tokenizer, smiles, "mlm", max_len)
        inputs, labels = mask_tokens(ids, mask, mask_fraction, tokenizer.mask_token_id, regular, generator)
        counted = int((labels != -100).sum())
        out = model(inputs.to(device), task="mlm", attention_mask=mask.to(device), labels=labels.to(device))
        sums["mlm"] += out.loss.item() * counted
        counts["mlm"] += counted

        if model.prediction_head is not None:
            ids, mask = (t.to(device) for t in encode_smiles(tokenizer, smiles, "prediction", max_len))
            targets = torch.tensor([[m.tpsa] for m in chunk], device=device)
            out = model(ids, task="prediction", attention_mask=mask, labels=targets)
            sums["prediction"] += out.loss.item() * len(chunk)
            counts["prediction"] += len(chunk)
            predictions += out.extras["predictions"][:, 0].tolist()
    losses = {task: sums[task] / counts[task] for task in sums if counts[task]}
    return HeldOut(losses, predictions)


def sample_smiles(model, tokenizer, count: int, seed: int = 0, temperature: float = 1.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None, batch_size: int = 256, on_progress=None) -> list[str]:
    """`count` molecules sampled from the `lm` task token, as SMILES strings (unchecked)."""
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    out: list[str] = []
    for index, start in enumerate(range(0, count, batch_size)):
        rows = min(batch_size, count - start)
        prefix = torch.full((rows, 1), tokenizer.bos_token_id, dtype=torch.long, device=device)
        generated = model.generate(prefix, max_new_tokens=model.config.max_seq_len - 1, temperature=temperature,
                                   top_k=top_k, top_p=top_p, eos=eos, seed=seed * 1_000_003 + index)
        for row in generated[:, 1:].tolist():
            row = row[: row.index(eos)] if eos in row else row
            out.append(tokenizer.decode(row, skip_special_tokens=True))
        if on_progress:
            on_progress(len(out), count)
    return out


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

