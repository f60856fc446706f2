"""How `tjdkit bench` shows its result: a rich table, parity lines, and a matplotlib figure."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.table import Table

MODE_NOTES = {
    "ar": "tjdkit, one token per forward",
    "hf": "transformers generate, greedy",
    "draft": "joint head alone (lossy)",
    "verify": "joint head + verification (lossless)",
    "lookup": "transformers prompt lookup (lossless)",
    "assisted": "transformers generate drafting with the head (lossless)",
}


def bench_table(result: dict, title: str) -> Table:
    notes = " · ".join(f"{mode}: {MODE_NOTES[mode]}" for mode in result["modes"])
    baselines = result.get("baselines", {})
    ratios = [(key, f"x {mode}") for key, mode in baselines.items() if not key.startswith("decode_")]  # ("speedup", "x hf")
    decode_ratios = [(key, f"decode x {mode}") for key, mode in baselines.items() if key.startswith("decode_")]
    if "speedup" in baselines:
        notes += f" · x {baselines['speedup']}: tok/s over the fastest plain decoding in this run"
    notes += " · decode: the tokens after the first, over the time after the prompt's forward (which every mode pays alike)"
    table = Table(title=title, caption=notes)
    reference = result.get("parity_reference")
    for column in ("mode", "tok/s", *(name for _, name in ratios), "s/prompt", "prefill s/prompt", "decode tok/s",
                   *(name for _, name in decode_ratios), "tok/fwd", "tau", "accepted by position", "peak MB",
                   f"= {reference}" if reference else "parity"):
        table.add_column(column, justify="left" if column in ("mode", "accepted by position") else "right")
    parity = result.get("parity", {})
    prompts = len(result["per_prompt"])
    for mode, row in result["modes"].items():
        same = parity.get(mode)
        if same is None:  # the reference itself, or no plain mode ran to compare with
            same_text = "-"
        elif same["identical"]:
            same_text = "[green]identical[/]"
        else:
            colour = "red" if same["lossless"] else "yellow"
            same_text = f"[{colour}]{same['identical_prompts']}/{prompts}[/]"
        rates = row.get("acceptance_by_position", [])  # lookup steps offer up to 10 drafts: the first 4 here, all in --json
        by_position = " ".join(f"{rate:.2f}" for rate in rates[:4]) + (" …" if len(rates) > 4 else "") or "-"
        table.add_row(
            mode,
            f"{row['tokens_per_second']:.1f}",
            *(f"{row[key]:.2f}x" for key, _ in ratios),
            f"{row['seconds_per_prompt']:.1f}",
            f"{row['prefill_seconds'] / max(prompts, 1):.1f}",
            f"{row['decode_tokens_per_second']:.1f}",
            *(f"{row[key]:.2f}x" for key, _ in decode_ratios),
            f"{row['tokens_per_forward']:.2f}",
            f"{row['tau']:.2f}" if "tau" in row else "-",
            by_position,
            f"{row['peak_memory_mb']:.0f}",
            same_text,
        )
    return table


def parity_lines(result: dict) -> list[str]:
    """One line per mode whose output differs from the plain reference (ar, else hf): where, and the two texts there."""
    lines = []
    reference = result.get("parity_reference", "ar")
    for mode, parity in result.get("parity", {}).items():
        for diff in parity["diffs"][:3]:
            kind = "[red]NOT lossless[/]" if parity["lossless"] else "[dim]lossy, expected[/]"
            lines.append(
                f"{mode} differs from {reference} on prompt {diff['prompt']} at token {diff['first_difference']} ({kind}): "
                f"{reference} {diff[reference]!r} vs {mode} {diff[mode]!r}"
            )
    return lines


def dtype_lines(result: dict) -> list[str]:
    """Each other weight format against the first, mode by mode, and whether its greedy output is the first's."""
    first = result.get("dtype", "")
    lines = []
    for dtype, ratios in result.get("dtype_speedups", {}).items():
        text = " · ".join(f"{mode} {ratio:.2f}x" for mode, ratio in ratios.items())
        line = f"{dtype} over {first}, tok/s mode by mode: {text}"
        agreement = result.get("dtype_agreement", {}).get(dtype)
        if agreement:
            line += (f"; {dtype}'s greedy output equals {first}'s on {agreement['identical_prompts']}/{agreement['prompts']}"
                     f" prompts ({dtype} is a close, not an equal model: lossless modes are checked inside each format)")
        lines.append(line)
    return lines


@contextlib.contextmanager
def head_run_display(console: Console) -> Iterator[Callable[[dict], None]]:
    """Yields resolve_head_run's `on_event`: says which cached head bench uses, or that it trains one
    now, then shows training. The training bars start at the first training event, once the model has
    loaded, so they never overlap the loading spinner."""
    from tjdkit.ui.training import TrainDisplay

    with contextlib.ExitStack() as stack:
        display = None

        def on_event(event: dict) -> None:
            nonlocal display
            kind = event["kind"]
            if kind == "head_cached":
                console.print(f"[dim]using the cached {event['head']} head {event['dir']}[/]")
            elif kind == "head_training":
                console.print(
                    f"[bold]No trained {event['head']} head (rank {event['rank']}, horizon {event['horizon']}) for "
                    f"{event['model']} on {event['dataset']} yet:[/] training one with recipe bench-{event['dataset']} "
                    f"(once; cached in {event['dir']})"
                )
            else:
                if display is None:
                    display = stack.enter_context(TrainDisplay(console))
                display(event)

        yield on_event


def save_plot(result: dict, path: Path, title: str) -> None:
    """Tokens/s by mode (labelled with the speedup over the fastest plain decoding) and verify's
    acceptance by draft position, as a PNG."""
    from tjdkit.ui.figures import pyplot, save_png

    plt = pyplot()
    modes = list(result["modes"])
    rows = [result["modes"][mode] for mode in modes]
    verify = result["modes"].get("verify")
    figure, axes = plt.subplots(1, 2 if verify else 1, figsize=(11 if verify else 6, 4), squeeze=False)
    speed = axes[0][0]
    bars = speed.bar(modes, [row["tokens_per_second"] for row in rows], color="#4C72B0")
    for bar, row in zip(bars, rows):
        if "speedup" in row:
            speed.annotate(f"{row['speedup']:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                           ha="center", va="bottom", fontsize=9)
    speed.set_ylabel("tokens / s")
    baseline = result.get("baselines", {}).get("speedup")
    speed.set_title(f"decoding speed (labels: x {baseline})" if baseline else "decoding speed")
    if verify:
        rates = verify["acceptance_by_position"]
        accept = axes[0][1]
        accept.bar([str(j) for j in range(1, len(rates) + 1)], rates, color="#55A868")
        accept.set_ylim(0, 1)
        accept.set_xlabel("draft position")
        accept.set_ylabel("accepted / offered")
        accept.set_title(f"verify acceptance (tau {verify['tau']:.2f})")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_png(figure, path)
