"""How `tjdkit tnot` shows a trace: entropy-coloured text, a sparkline, a summary line, a table and a plot."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Optional

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

BLOCKS = "▁▂▃▄▅▆▇█"
UNSET_THRESHOLD = 3.0  # the default static threshold: a scale for colours when entropy control was off
MAX_PLOTS = 6


def entropy_style(entropy: float, threshold: Optional[float]) -> str:
    """Green to red as a token's entropy nears its threshold (what the trigger compares it with)."""
    scale = UNSET_THRESHOLD if threshold is None else threshold
    ratio = entropy / scale if scale > 0 else float("inf")
    if ratio < 1 / 3:
        return "green"
    if ratio < 2 / 3:
        return "yellow"
    if ratio < 1:
        return "dark_orange"
    return "bold red"


def entropy_text(pieces: list[str], records) -> Text:
    """The response coloured token by token; ↻ marks a reflected token, a forced EOS says why it ended."""
    text = Text()
    for piece, record in zip(pieces, records):
        style = entropy_style(record.entropy, record.threshold)
        if record.reflected:
            text.append("↻", style="magenta")
            style += " underline"
        text.append(piece, style=style)
        if record.forced_eos:
            text.append(f" ⏹ ended: entropy {record.entropy:.2f} > {record.threshold:.2f}", style="red")
    return text


def _bucket_style(bucket) -> str:
    if any(r.reflected for r in bucket):
        return "magenta"
    if any(r.threshold is not None and r.entropy > r.threshold for r in bucket):
        return "red"
    return "dim"


def _threshold_note(records) -> str:
    thresholds = {r.threshold for r in records if r.threshold is not None}
    if not thresholds:
        return " · no threshold"
    if len(thresholds) == 1:
        return f" · threshold {thresholds.pop():.2f}"
    return f" · threshold {min(thresholds):.2f}–{max(thresholds):.2f}"  # adaptive


def sparkline(records, width: int = 60) -> Text:
    """Entropy per token as block heights, at most `width` wide (each block the maximum of its tokens)."""
    if not records:
        return Text("(no tokens)", style="dim")
    entropies = [r.entropy for r in records]
    scale = max(max(entropies), *(r.threshold for r in records if r.threshold is not None), 1e-6)
    count = len(records)
    buckets = min(count, width)
    line = Text()
    for index in range(buckets):
        bucket = records[index * count // buckets : (index + 1) * count // buckets]
        height = max(r.entropy for r in bucket) / scale
        line.append(BLOCKS[round(height * (len(BLOCKS) - 1))], style=_bucket_style(bucket))
    line.append(f" max {max(entropies):.2f} nats{_threshold_note(records)}", style="dim")
    return line


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def trace_summary(result) -> str:
    """One line on what TNOT did to a response and what it cost."""
    reflections = _count(result.reflections, "reflection")
    if result.reflections:
        reflections += f" ({result.changed_by_reflection} changed the token)"
    parts = [_count(len(result.tokens), "token"), reflections]
    if result.forced_eos:
        parts.append("ended by entropy")
    if result.prompt_losses:
        parts.append(f"prompt CE {result.prompt_ce_before:.2f} → {result.prompt_ce_after:.2f}")
    parts.append(f"prompt stage {result.prompt_seconds:.2f} s")
    if result.reflections:
        parts.append(f"reflections {result.reflection_seconds:.2f} s")
    parts.append(f"{result.seconds:.2f} s")
    return " · ".join(parts)


def reflection_line(records, decode) -> Optional[str]:
    """Where the response reflected and what it did: "↻ 3: ' the' → ' a' · ↻ 9: ' 7' kept"
    (`decode` turns one token id into its text); None when nothing triggered."""
    notes = []
    for r in records:
        if r.reflected:
            change = f"{decode(r.before)!r} → {decode(r.token)!r}" if r.before != r.token else f"{decode(r.token)!r} kept"
            notes.append(f"↻ {r.position}: {change}")
        elif r.forced_eos:
            notes.append(f"⏹ {r.position}: ended instead of {decode(r.before)!r}")
    return " · ".join(notes) if notes else None


def tnot_trace(result, tokenizer, run=None) -> Group:
    """One TNOT trace, the same in `tnot` and `chat --tnot`: the entropy sparkline, where it reflected,
    and TNOT's numbers. Given the prompt's `run` (`tjdkit tnot`), also the prompt and its entropy-coloured
    response above them, the verdict, how the response compares with plain decoding, and a blank line."""
    parts = []
    if run is not None:
        from tjdkit.tnot.records import token_pieces

        label = run.item.label.strip().replace("\n", " ⏎ ")
        parts.append(Text.assemble(("› ", "bold"), (label[:200], "bold")))
        parts.append(entropy_text(token_pieces(tokenizer, result.tokens), result.records))
    parts.append(sparkline(result.records))
    reflections = reflection_line(result.records, lambda token: tokenizer.decode([token]))
    if reflections:
        parts.append(Text(reflections, style="magenta"))
    verdict = "" if run is None or run.correct is None else (" · correct" if run.correct else " · wrong")
    parts.append(Text(trace_summary(result) + verdict, style="dim"))
    if run is not None:
        if run.plain_tokens is not None:
            same = "same as plain" if run.plain_tokens == result.tokens else "differs from plain"
            plain_verdict = "" if run.plain_correct is None else (" (correct)" if run.plain_correct else " (wrong)")
            parts.append(Text(f"{same}{plain_verdict}: {run.plain_text.strip()[:200]!r}", style="dim"))
        parts.append(Text(""))
    return Group(*parts)


@contextlib.contextmanager
def tnot_progress(console: Console, out: Console, title: str, total: int, shown: int,
                  tokenizer) -> Iterator[tuple[Callable[[int, object], None], Callable[[int, object], None]]]:
    """A live bar over run_prompts; yields its (on_token, on_done). The first `shown` prompts' traces
    print above the bar on a terminal, else to `out`; off a terminal the others get one line each."""
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                        console=console, transient=True, disable=not console.is_terminal)
    task = progress.add_task(title, total=total, status="")
    counts = {"tokens": 0, "reflections": 0}

    def on_token(index: int, record) -> None:
        counts["tokens"] += 1
        counts["reflections"] += record.reflected
        progress.update(task, status=f"prompt {index + 1}: {counts['tokens']} tokens, {counts['reflections']} reflections")

    def on_done(index: int, run) -> None:
        counts.update(tokens=0, reflections=0)
        progress.update(task, advance=1)
        if index < shown:  # above the live progress display on a terminal, else straight to stdout
            block = tnot_trace(run.tnot, tokenizer, run)
            (progress.console if console.is_terminal else out).print(block)
        elif not console.is_terminal:  # logs get one line per prompt instead of the progress bar
            console.print(f"[dim]prompt {index + 1}/{total} · {trace_summary(run.tnot)}[/]")

    with progress:
        yield on_token, on_done


def difference_text(difference: dict | None) -> str:
    """'+2.5 pts [-1.0, +6.0]': the accuracy difference and its interval, in percentage points."""
    if not difference:
        return "-"
    return (f"{100 * difference['difference']:+.1f} pts "
            f"[{100 * difference['low']:+.1f}, {100 * difference['high']:+.1f}]")


def _or_dash(value, form: str) -> str:
    return "-" if value is None else form.format(value)


def compare_table(rows: list[dict], title: str) -> Table:
    """TNOT beside plain decoding: accuracy, speed, and what the trigger and prompt stage did."""
    table = Table(title=title)
    for column in ("mode", "prompts", "accuracy", "vs plain (CI)", "tokens", "s/prompt", "ms/token", "tok/s",
                   "latency vs plain", "reflections", "forced ends", "prompt CE"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for row in rows:
        before, after = row["prompt_ce_before"], row["prompt_ce_after"]
        table.add_row(
            row["mode"],
            str(row["prompts"]),
            _or_dash(row["accuracy"], "{:.1%}"),
            difference_text(row.get("difference")),
            str(row["new_tokens"]),
            f"{row['seconds_per_prompt']:.2f}",
            f"{row['ms_per_token']:.1f}",
            f"{row['tokens_per_second']:.1f}",
            _or_dash(row["latency_ratio"], "{:.2f}x"),
            _or_dash(row["reflections"], "{}"),
            _or_dash(row["forced_ends"], "{}"),
            "-" if before is None or after is None else f"{before:.2f} → {after:.2f}",
        )
    return table


def _short(title: str, limit: int = 80) -> str:
    title = " ".join(title.split())  # prompts span lines; a subplot title should not
    return title if len(title) <= limit else title[: limit - 1] + "…"


def _plot_trace(axis, records) -> None:
    xs = [r.position for r in records]
    axis.plot(xs, [r.entropy for r in records], marker=".", markersize=4, linewidth=1, color="#4C72B0",
              label="entropy")
    if any(r.threshold is not None for r in records):
        thresholds = [float("nan") if r.threshold is None else r.threshold for r in records]
        axis.step(xs, thresholds, where="mid", linestyle="--", linewidth=1, color="grey", label="threshold")
    reflected = [r for r in records if r.reflected]
    if reflected:
        at = [r.position for r in reflected]
        before, after = [r.entropy for r in reflected], [r.entropy_after for r in reflected]
        axis.vlines(at, after, before, color="magenta", linewidth=0.8)
        axis.plot(at, before, "^", color="magenta", label="reflected")
        axis.plot(at, after, "o", markerfacecolor="none", markeredgecolor="magenta", label="after reflection")
    ended = [r for r in records if r.forced_eos]
    if ended:
        axis.plot([r.position for r in ended], [r.entropy for r in ended], "X", color="red", markersize=9,
                  label="forced EOS")
    axis.set_ylabel("entropy (nats)")


def save_trace_plot(traces: list[tuple[str, list]], path: Path, title: str) -> None:
    """Entropy per response position for each (title, records) trace, with threshold and triggers, as a PNG."""
    from tjdkit.ui.figures import pyplot, save_png

    plt = pyplot()
    shown = traces[:MAX_PLOTS]
    if len(traces) > MAX_PLOTS:
        title = f"{title} (first {MAX_PLOTS} of {len(traces)})"
    figure, axes = plt.subplots(max(len(shown), 1), 1, figsize=(10, 1.2 + 2.4 * max(len(shown), 1)), sharex=True,
                                squeeze=False)
    legend = {}
    for (name, records), (axis,) in zip(shown, axes):
        _plot_trace(axis, records)
        axis.set_title(_short(name), fontsize=9)
        handles, labels = axis.get_legend_handles_labels()
        legend.update(zip(labels, handles))
    if legend:
        axes[0][0].legend(legend.values(), legend.keys(), fontsize=7)  # one legend for every subplot's markers
    axes[-1][0].set_xlabel("response position")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_png(figure, path)
