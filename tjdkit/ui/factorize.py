"""How `tjdkit factorize` shows its result: per-layer lines, a report table, a spectra plot."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

RANK_NAMES = {"tucker": "R_dmodel,R_headdim,R_role", "tpa": "R_q,R_k,R_v", "latent": "K key dims,R value rank"}
ERROR_NOTES = {
    "tucker": "rel. error: ||W - W'|| / ||W|| over the layer's Q/K/V/O weights",
    "tpa": "rel. error: worst of Q/K/V outputs on the calibration text, after refinement",
    "latent": "rel. error: of the values on the calibration text; params: V's (A+B against v_proj)",
}


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 10_000:
        return f"{n / 1e3:.1f}k"
    return str(n)


def _ranks(row) -> str:
    return "dense" if row.extra.get("dense") else ",".join(str(r) for r in row.ranks)


def layer_line(row, done: int, total: int) -> str:
    ranks = _ranks(row)
    return (
        f"[{done}/{total}] layer {row.layer:>2} ({row.attention}) ranks {ranks:<12} "
        f"{_count(row.parameters_before)} -> {_count(row.parameters_after)} params "
        f"({row.compression:.2f}x), rel. error {row.relative_error:.3g}, {row.seconds:.2f} s"
    )


def report_table(report, title: str) -> Table:
    tpa = report.method in ("tpa", "latent")  # both change the KV cache
    caption = [f"ranks: {RANK_NAMES[report.method]}", ERROR_NOTES[report.method],
               "params: attention weights (biases and norms not counted)"]
    if tpa:
        caption.append("KV: cache bytes per token and layer at the model's dtype (original -> factors)")
    table = Table(title=title, caption=" · ".join(caption))
    columns = ["layer", "attn", "ranks", "params", "after", "ratio", "rel. err"]
    if tpa:
        columns.append("KV B/token")
    columns.append("s")
    for column in columns:
        table.add_column(column, justify="left" if column in ("attn", "ranks") else "right")
    width = report.dtype_bytes
    for row in report.layers:
        cells = [
            str(row.layer),
            row.attention,
            _ranks(row),
            _count(row.parameters_before),
            _count(row.parameters_after),
            f"{row.compression:.2f}x",
            f"{row.relative_error:.3g}",
        ]
        if tpa:
            cells.append(f"{row.kv_numbers_before * width}→{row.kv_numbers_after * width}")
        cells.append(f"{row.seconds:.2f}")
        table.add_row(*cells)
    total = [
        "all",
        f"{len(report.layers)} of {report.num_layers}",
        "",
        _count(report.parameters_before),
        _count(report.parameters_after),
        f"[bold]{report.compression:.2f}x[/]",
        "",
    ]
    if tpa:
        before = sum(r.kv_numbers_before for r in report.layers) * width
        after = sum(r.kv_numbers_after for r in report.layers) * width
        total.append(f"{before}→{after}")
    total.append(f"{report.seconds:.1f}")
    table.add_section()
    table.add_row(*total)
    return table


def perplexity_line(report) -> str:
    if report.perplexity_before is None:
        return "perplexity: not measured (eval_tokens = 0)"
    change = report.perplexity_change
    colour = "green" if change <= 0.03 else "yellow" if change <= 0.10 else "red"
    line = (
        f"perplexity on {report.eval_tokens} held-out tokens (ShareGPT test): "
        f"{report.perplexity_before:.3f} -> {report.perplexity_after:.3f} ([{colour}]{change:+.2%}[/])"
    )
    if report.perplexity_healed is not None:
        healed = report.perplexity_healed / report.perplexity_before - 1.0
        colour = "green" if healed <= 0.03 else "yellow" if healed <= 0.10 else "red"
        line += f" -> healed {report.perplexity_healed:.3f} ([{colour}]{healed:+.2%}[/])"
    return line


def heal_line(report) -> str | None:
    heal = report.heal
    if not heal:
        return None
    outcome = "kept" if heal["kept"] else "[yellow]not kept: it did not lower held-out perplexity, the unhealed factors are back[/]"
    return (
        f"healing: {heal['steps']} steps in {heal['seconds']:.0f} s, distillation KL {heal['kl_before']:.4f} -> "
        f"{heal['kl_after']:.4f} on held-out calibration windows; {outcome} (checkpoints: {heal['run_dir']})"
    )


def budget_line(report) -> str | None:
    """rank auto's outcome: the budget, what fitted, and the check of the chosen combination."""
    budget = report.budget
    if not budget:
        return None
    if not budget["fits"]:
        return (
            f"[yellow]nothing fits a {budget['max_ppl_increase']:.1%} perplexity budget: every layer stays dense "
            "(raise --max-ppl-increase, or give --rank 2x to compress at a cost)[/]"
        )
    kept = sum(1 for row in report.layers if row.extra.get("dense"))
    return (
        f"rank auto: smallest attention within +{budget['max_ppl_increase']:.1%} perplexity (layers measured on "
        f"{budget['tokens']} calibration tokens, the choice checked on {budget['check_tokens']} others: "
        f"{budget['perplexity_dense']:.3f} -> {budget['perplexity_chosen']:.3f}, {budget['increase']:+.2%}, try "
        f"{budget['attempts']}); {kept} layer(s) kept dense"
    )


def save_spectra_plot(report, path: Path, title: str) -> None:
    """Each decomposed mode's normalised singular values per layer, with the chosen rank marked."""
    from tjdkit.ui.figures import pyplot, save_png

    plt = pyplot()
    modes = list(report.layers[0].spectra) if report.layers else []
    figure, axes = plt.subplots(1, max(len(modes), 1), figsize=(4.2 * max(len(modes), 1), 3.8), squeeze=False)
    colours = plt.get_cmap("viridis")
    count = max(len(report.layers), 1)
    for column, mode in enumerate(modes):
        axis = axes[0][column]
        for position, row in enumerate(report.layers):
            values = row.spectra[mode]
            top = values[0] if values and values[0] > 0 else 1.0
            normalised = [v / top for v in values]
            colour = colours(position / max(count - 1, 1))
            xs = range(1, len(values) + 1)
            axis.plot(xs, normalised, color=colour, linewidth=1, label=f"layer {row.layer}" if count <= 6 else None)
            rank = row.ranks[column]
            if 1 <= rank <= len(values):
                axis.plot([rank], [normalised[rank - 1]], marker="o", color=colour, markersize=4)
        axis.set_yscale("log")
        axis.set_xlabel("index (dot: chosen rank)")
        axis.set_ylabel("singular value / largest")
        axis.set_title(f"mode {mode}")
        if count <= 6:
            axis.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_png(figure, path)


def notes(report) -> list[str]:
    """What a user should know about this result that the table does not say outright."""
    lines = []
    larger = [row.layer for row in report.layers if row.parameters_after > row.parameters_before]
    if report.method == "tucker" and not report.options.materialize and larger:
        lines.append(
            f"note: on {len(larger)} of {len(report.layers)} layers the stored factors are larger than the dense "
            "weights (flat spectra keep ranks near full); --materialize writes the denoised dense weights, "
            "--rank 2x compresses at a cost the perplexity line shows"
        )
    if report.method == "tpa" and any(row.kv_numbers_after >= row.kv_numbers_before for row in report.layers):
        lines.append(
            "note: the KV cache of factors, (R_k+R_v)(heads+head_dim) numbers per token, is not smaller than this "
            "model's own cache (2*kv_heads*head_dim); TPA shrinks caches of models with many KV heads"
        )
    return lines
