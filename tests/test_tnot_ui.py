"""The TNOT renderers on hand-made traces: colours, markers, sparkline buckets, summary lines, table, plot."""

from __future__ import annotations

import re

import pytest
from rich.console import Console

from tjdkit.tnot.generate import TnotResult, TokenRecord
from tjdkit.ui.tnot import compare_table, entropy_style, entropy_text, save_trace_plot, sparkline, trace_summary


def _records(entropies, threshold=3.0, reflected=(), forced=None):
    thresholds = threshold if isinstance(threshold, list) else [threshold] * len(entropies)
    records = [TokenRecord(position=i, token=100 + i, entropy=e, threshold=t) for i, (e, t) in
               enumerate(zip(entropies, thresholds))]
    for i in reflected:
        records[i].reflected, records[i].entropy_after, records[i].before = True, records[i].entropy / 2, 7
    if forced is not None:
        records[forced].forced_eos, records[forced].token = True, 2
    return records


def _styles(text):
    """The style of each character of a rich Text, by position."""
    styles = [str(text.style)] * len(text.plain)
    for span in text.spans:
        for i in range(span.start, span.end):
            styles[i] = str(span.style)
    return styles


def _render(renderable) -> str:
    console = Console(record=True, width=200)
    console.print(renderable)
    return console.export_text()


@pytest.mark.parametrize("entropy, threshold, style", [
    (0.0, 3.0, "green"), (0.99, 3.0, "green"), (1.0, 3.0, "yellow"), (1.99, 3.0, "yellow"),
    (2.0, 3.0, "dark_orange"), (2.99, 3.0, "dark_orange"), (3.0, 3.0, "bold red"), (9.0, 3.0, "bold red"),
    (0.5, 2.0, "green"), (1.0, 2.0, "yellow"), (1.5, 2.0, "dark_orange"), (2.0, 2.0, "bold red"),
    (0.99, None, "green"), (1.5, None, "yellow"), (3.0, None, "bold red"), (0.0, 0.0, "bold red"),
])
def test_entropy_style_by_the_ratio_to_the_threshold(entropy, threshold, style):
    assert entropy_style(entropy, threshold) == style


def test_entropy_text_colours_marks_reflections_and_says_why_it_ended():
    records = _records([0.1, 2.5, 4.0, 0.2, 5.0], reflected=[2], forced=4)
    pieces = ["Hi", " there\n", "", "!", ""]
    text = entropy_text(pieces, records)
    assert text.plain == "Hi there\n↻! ⏹ ended: entropy 5.00 > 3.00"
    styles = _styles(text)
    assert styles[0] == "green" and styles[2] == "dark_orange"
    marker = text.plain.index("↻")
    assert styles[marker] == "magenta"
    assert styles[marker + 1] == "green"  # the empty reflected piece takes no characters; "!" follows
    assert styles[text.plain.index("⏹")] == "red"


def test_entropy_text_underlines_a_reflected_piece():
    text = entropy_text(["a", "b"], _records([0.1, 4.0], reflected=[1]))
    assert text.plain == "a↻b"
    assert _styles(text)[2] == "bold red underline"


def test_sparkline_one_block_per_token_scaled_to_the_threshold():
    records = _records([0.0, 1.5, 3.0, 6.0], reflected=[3])
    line = sparkline(records)
    blocks = line.plain[:4]
    assert blocks == "▁▃▅█"  # scale max(6.0, 3.0) = 6.0
    assert line.plain[4:] == " max 6.00 nats · threshold 3.00"
    assert _styles(line)[:4] == ["dim", "dim", "dim", "magenta"]


def test_sparkline_buckets_show_each_maximum_and_colour_red_below_magenta():
    # 8 tokens in 4 buckets of 2: (0, 4) over the threshold, (1, 0.5), (3.9 reflected, 4 forced), (0, 0)
    records = _records([0.0, 4.0, 1.0, 0.5, 3.9, 4.0, 0.0, 0.0], reflected=[4], forced=5)
    line = sparkline(records, width=4)
    assert line.plain[:4] == "█▃█▁"
    assert _styles(line)[:4] == ["red", "dim", "magenta", "dim"]
    assert line.plain[4:] == " max 4.00 nats · threshold 3.00"


def test_sparkline_uneven_buckets_cover_every_token():
    records = _records([0.0] * 9 + [3.0])
    line = sparkline(records, width=4)
    assert line.plain[:4] == "▁▁▁█"
    assert _styles(line)[:4] == ["dim"] * 4  # 3.0 is not over a threshold of 3.0


def test_sparkline_threshold_suffixes():
    adaptive = sparkline(_records([1.0, 2.0, 1.0], threshold=[3.0, 1.8, 2.25]))
    assert adaptive.plain.endswith(" max 2.00 nats · threshold 1.80–3.00")
    off = sparkline(_records([1.0, 2.0], threshold=None))
    assert off.plain == "▅█ max 2.00 nats · no threshold"
    assert sparkline([]).plain == "(no tokens)"
    assert str(sparkline([]).style) == "dim"


def _result(reflections=2, changed=1, forced=True, losses=(3.19, 2.8, 2.47)):
    records = _records([0.5] * 12)
    for i in range(reflections):
        records[i].reflected, records[i].before = True, records[i].token + (1 if i < changed else 0)
    return TnotResult(tokens=[r.token for r in records], records=records, prompt_losses=list(losses),
                      reflections=reflections, forced_eos=forced, prompt_seconds=0.87, reflection_seconds=0.51,
                      seconds=9.86)


def test_trace_summary_everything():
    assert trace_summary(_result()) == ("12 tokens · 2 reflections (1 changed the token) · ended by entropy · "
                                        "prompt CE 3.19 → 2.47 · prompt stage 0.87 s · reflections 0.51 s · 9.86 s")


def test_trace_summary_without_reflections_forced_end_or_prompt_stage():
    assert trace_summary(_result(reflections=0, changed=0, forced=False, losses=())) == (
        "12 tokens · 0 reflections · prompt stage 0.87 s · 9.86 s")


def test_trace_summary_singular():
    result = _result(reflections=1, changed=0, forced=False)
    result.tokens, result.records = result.tokens[:1], result.records[:1]
    assert trace_summary(result) == ("1 token · 1 reflection (0 changed the token) · prompt CE 3.19 → 2.47 · "
                                     "prompt stage 0.87 s · reflections 0.51 s · 9.86 s")


def test_compare_table_cells():
    plain = {"mode": "plain", "prompts": 20, "accuracy": 0.8, "new_tokens": 1200, "seconds_per_prompt": 1.5,
             "ms_per_token": 25.0, "tokens_per_second": 40.0, "latency_ratio": None, "reflections": None,
             "forced_ends": None, "prompt_ce_before": None, "prompt_ce_after": None}
    tnot = {**plain, "mode": "tnot", "accuracy": 0.85, "new_tokens": 1180, "seconds_per_prompt": 1.62,
            "ms_per_token": 27.46, "tokens_per_second": 36.4, "latency_ratio": 1.08, "reflections": 7,
            "forced_ends": 2, "prompt_ce_before": 3.19, "prompt_ce_after": 2.47,
            "difference": {"difference": 0.05, "low": -0.015, "high": 0.1, "level": 0.95, "items": 20, "resamples": 10000}}
    unscored = {**tnot, "mode": "unscored", "accuracy": None}
    output = _render(compare_table([plain, tnot, unscored], "TNOT vs plain"))
    assert output.lstrip().startswith("TNOT vs plain")
    lines = [re.split("[│┃]", line)[1:-1] for line in output.splitlines() if line.startswith(("│", "┃"))]
    rows = {cells[0].strip(): cells for cells in lines}
    assert [cell.strip() for cell in rows["mode"]] == [
        "mode", "prompts", "accuracy", "vs plain (CI)", "tokens", "s/prompt", "ms/token", "tok/s", "latency vs plain",
        "reflections", "forced ends", "prompt CE"]
    assert [cell.strip() for cell in rows["plain"]] == [
        "plain", "20", "80.0%", "-", "1200", "1.50", "25.0", "40.0", "-", "-", "-", "-"]
    assert [cell.strip() for cell in rows["tnot"]] == [
        "tnot", "20", "85.0%", "+5.0 pts [-1.5, +10.0]", "1180", "1.62", "27.5", "36.4", "1.08x", "7", "2", "3.19 → 2.47"]
    assert rows["unscored"][2].strip() == "-"
    assert rows["tnot"][0].startswith(" tnot ") and rows["tnot"][1].startswith("   ")  # numbers right-aligned


def _png(path) -> bytes:
    return path.read_bytes()[:8]


def test_save_trace_plot_one_trace(tmp_path):
    records = _records([0.5, 1.0, 4.0, 0.3, 5.0], reflected=[2], forced=4)
    save_trace_plot([("What is 20°C in Fahrenheit?\n" + "x" * 200, records)], tmp_path / "one.png", "TNOT")
    assert _png(tmp_path / "one.png") == b"\x89PNG\r\n\x1a\n"


def test_save_trace_plot_many_traces_adaptive_and_off(tmp_path):
    traces = [(f"prompt {i}", _records([0.5, 2.0, 1.0], threshold=[3.0, 1.8, 2.0] if i % 2 else None))
              for i in range(8)]
    traces.append(("empty", []))
    save_trace_plot(traces, tmp_path / "many.png", "TNOT")
    assert _png(tmp_path / "many.png") == b"\x89PNG\r\n\x1a\n"


def test_save_trace_plot_without_thresholds(tmp_path):
    save_trace_plot([("off", _records([0.5, 2.0, 1.0], threshold=None))], tmp_path / "off.png", "no control")
    assert _png(tmp_path / "off.png") == b"\x89PNG\r\n\x1a\n"


def test_reflection_line_names_positions_and_changes():
    from tjdkit.tnot.generate import TokenRecord
    from tjdkit.ui.tnot import reflection_line

    records = [
        TokenRecord(0, 5, 1.0, 3.0),
        TokenRecord(1, 7, 3.5, 3.0, reflected=True, entropy_after=2.0, before=6),
        TokenRecord(2, 8, 3.2, 3.0, reflected=True, entropy_after=2.9, before=8),
        TokenRecord(3, 1, 3.9, 3.0, forced_eos=True, before=9),
    ]
    decode = {6: " the", 7: " a", 8: " 7", 9: "x"}.get
    assert reflection_line(records, decode) == "↻ 1: ' the' → ' a' · ↻ 2: ' 7' kept · ⏹ 3: ended instead of 'x'"
    assert reflection_line(records[:1], decode) is None
