"""How `tjdkit eval` shows its result: a joint head's table and lines, a Hyformer's molecule and TPSA tables."""

from __future__ import annotations

from rich.console import RenderableType
from rich.table import Table


def head_eval_report(result: dict, label: str, dataset: str, split: str) -> list[RenderableType]:
    """Accuracy and speed per decoding mode, then per-token NLL and (with a head) verify's acceptance."""
    table = Table(title=f"eval {label} on {dataset}/{split} ({result['examples']} examples)")
    for column in ("mode", "accuracy", "tokens/forward", "tau", "tokens/s"):
        table.add_column(column, justify="right")
    for mode, row in result["modes"].items():
        accuracy = f"{row['accuracy']:.1%}" if row["accuracy"] is not None else "-"
        tau = f"{row['tau']:.2f}" if "tau" in row else "-"
        table.add_row(mode, accuracy, f"{row['tokens_per_forward']:.2f}", tau, f"{row['tokens_per_second']:.1f}")
    nll = result["nll"]
    head_part = f"head {nll['head']:.4f} · " if "head" in nll else ""
    parts: list[RenderableType] = [table, f"NLL per token: {head_part}base {nll['base']:.4f}"]
    if "acceptance" in result:
        acc = result["acceptance"]
        by_position = " ".join(f"{p:.2f}" for p in acc["by_position"])
        parts.append(
            f"verify acceptance (greedy, along the model's own output): {acc['mean_accepted']:.2f} drafts accepted + 1 "
            f"= tau {acc['tau']:.2f} tokens per verify forward; acceptance by draft position: {by_position}"
        )
    return parts


def hyformer_eval_report(result: dict, target: str, split: str, temperature: float, seed: int) -> list[RenderableType]:
    """Sampled molecules (valid, unique, novel), TPSA prediction beside the training-mean baseline, and NLL."""
    g = result["generation"]
    table = Table(title=f"eval {target}: {g['total']} molecules sampled (temperature {temperature:g}, seed {seed})")
    for column in ("valid", "unique (of valid)", "novel (of unique)"):
        table.add_column(column, justify="right")
    table.add_row(f"{g['validity']:.1%} ({g['valid']})", f"{g['uniqueness']:.1%} ({g['unique']})", f"{g['novelty']:.1%} ({g['novel']})")
    parts: list[RenderableType] = [table]
    if g["examples"]:
        parts.append("novel molecules: " + "  ".join(g["examples"][:5]))
    p = result["prediction"]
    if p is not None:
        table = Table(title=f"TPSA on the {split} split ({p['n']} molecules, Å²)")
        for column in ("predictor", "RMSE", "MAE", "R²"):
            table.add_column(column, justify="right" if column != "predictor" else "left")
        table.add_row("Hyformer", f"{p['rmse']:.2f}", f"{p['mae']:.2f}", f"{p['r2']:.3f}")
        table.add_row(f"training mean ({p['baseline']:.1f})", f"{p['baseline_rmse']:.2f}", f"{p['baseline_mae']:.2f}",
                      f"{p['baseline_r2']:.3f}")
        parts.append(table)
    parts.append(f"NLL per token on {split}: LM {result['nll']['lm']:.4f} · MLM {result['nll']['mlm']:.4f}")
    return parts
