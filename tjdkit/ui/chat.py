"""How `tjdkit chat` reports a reply and its TNOT settings (the TNOT trace itself: tjdkit.ui.tnot.tnot_trace)."""

from __future__ import annotations


def reply_stats_line(reply) -> str:
    """Tokens, speed and time to the first token; with a joint head, its forwards and acceptance."""
    first = f" · first token {reply.first_token_seconds:.2f} s" if reply.first_token_seconds is not None else ""
    stopped = " · stopped" if reply.interrupted else ""
    decoding = ""
    stats = reply.stats
    if stats is not None and stats.mode == "verify":
        rates = stats.acceptance_by_position()  # lookup copies can offer up to 31 drafts: the first 4 here
        by_position = " ".join(f"{rate:.2f}" for rate in rates[:4]) + (" …" if len(rates) > 4 else "") or "-"
        decoding = f" · {stats.forwards} forwards · tau {stats.tau:.2f} · acceptance by position {by_position}"
    elif stats is not None:
        decoding = f" · {stats.forwards} forwards · {stats.tokens_per_forward:.2f} tokens/forward (draft, lossy)"
    return f"[dim]{reply.tokens} tokens · {reply.tokens_per_second:.1f} tok/s{first}{decoding}{stopped}[/]"


def tnot_settings_text(config) -> str:
    """TNOT's settings in one phrase, shown when the REPL starts."""
    trigger = (f"adaptive threshold (N={config.window}, K={config.k:g})" if config.adaptive
               else f"entropy threshold {config.entropy_threshold:g}")
    if not config.entropy_control:
        trigger = "no entropy control"
    return f"{config.steps} steps, lr {config.lr:g}, {trigger}, up to {config.max_retries} reflections"
