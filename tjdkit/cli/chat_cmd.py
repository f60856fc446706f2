"""Chat with a model: a streaming REPL, or one answer with --prompt."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from tjdkit.cli.common import (
    JsonOpt,
    RecipeOpt,
    SeedOpt,
    SetOpt,
    check_outputs,
    check_text,
    fresh_seed,
    load_model_with_progress,
    load_run_with_progress,
    read_stdin_text,
    seed_all,
    settings,
    stderr,
    write_json,
)

EXAMPLES = """Examples:

  tjdkit chat --model gemma3 --temperature 0.7 --seed 1
  tjdkit chat --model tiny-llama --prompt "Hello" -n 32 --json reply.json
  echo "What is 3 C in F?" | tjdkit chat --tnot --entropy-threshold 3 --prompt -
"""

HELP_LINE = "/reset clears the history, /exit or Ctrl-D leaves, Ctrl-C stops a reply"
TNOT_HELP = "/trace shows or hides the entropy trace"


def chat(
    recipe: RecipeOpt = None,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name, directory, .gguf file or hub id."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", "-n", help="Longest reply, in tokens."),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t", help="0 for greedy decoding."),
    top_k: Optional[int] = typer.Option(None, "--top-k"),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    seed: SeedOpt = None,
    system: Optional[str] = typer.Option(None, "--system", help="System prompt."),
    chat_format: Optional[str] = typer.Option(
        None, "--format", help="auto, template, gemma (turns) or raw (plain continuation)."
    ),
    raw: bool = typer.Option(False, "--raw", help="Same as --format raw."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Answer once and exit; '-' reads stdin."),
    head: Optional[str] = typer.Option(
        None, "--head", help="Joint head to decode with: a training run, a head directory (save_pretrained) or a hub id; its base model is the default --model."
    ),
    head_mode: Optional[str] = typer.Option(
        None, "--head-mode", help="verify (lossless, the model's own output) or draft (the head alone, lossy)."
    ),
    tnot: bool = typer.Option(False, "--tnot", help="Every reply with TNOT: prompt delta, entropy trigger, reflection."),
    entropy_threshold: Optional[float] = typer.Option(None, "--entropy-threshold", help="TNOT's static trigger, nats (default: 3)."),
    adaptive: Optional[bool] = typer.Option(None, "--adaptive/--static", help="TNOT's adaptive threshold over the last 20 tokens."),
    steps: Optional[int] = typer.Option(None, "--steps", help="TNOT's AdamW steps on the delta (default: 3)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto, float32, bfloat16, float16, or fp16-weights (CPU: float16 weights, float32 arithmetic; faster decoding)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps."),
    overrides: SetOpt = None,
    json_path: JsonOpt = None,
) -> None:
    """Chat with a model: a streaming REPL, or one answer with --prompt (--json: the reply, its stats and the settings)."""
    from tjdkit.config import ChatRecipe
    from tjdkit.errors import TjdkitError
    from tjdkit.recipes import load_recipe

    flags = {
        "model.name": model,
        "model.dtype": dtype,
        "model.device": device,
        "generation.max_new_tokens": max_new_tokens,
        "generation.temperature": temperature,
        "generation.top_k": top_k,
        "generation.top_p": top_p,
        "generation.seed": seed,
        "chat.system": system,
        "chat.format": "raw" if raw else chat_format,
        "chat.head": head,
        "chat.head_mode": head_mode,
        "chat.tnot": True if tnot else None,
        "tnot.entropy_threshold": entropy_threshold,
        "tnot.adaptive": adaptive,
        "tnot.steps": steps,
    }
    config = load_recipe(recipe or "chat", ChatRecipe, overrides or [], flags)
    if json_path is not None and prompt is None:
        raise TjdkitError("--json records one answer: add --prompt")
    check_outputs(json_path)
    import dataclasses

    # No --seed: a fresh one, recorded in the settings, so the run can be repeated.
    config = dataclasses.replace(config, generation=dataclasses.replace(config.generation, seed=fresh_seed(config.generation.seed)))
    seed_all(config.generation.seed)
    tnot_settings = [name for name, value in (("--entropy-threshold", entropy_threshold), ("--adaptive", adaptive),
                                              ("--steps", steps)) if value is not None]
    if tnot_settings and not config.chat.tnot:
        raise TjdkitError(f"{', '.join(tnot_settings)} set TNOT up: add --tnot")
    if config.chat.tnot and config.chat.head:
        raise TjdkitError("choose a joint head (--head) or TNOT (--tnot), not both")
    check_text(config.chat.system, "--system")
    if prompt is not None:
        prompt = read_stdin_text() if prompt == "-" else check_text(prompt)
        if not prompt.strip():
            raise TjdkitError("empty prompt")

    from tjdkit.chat import ChatSession

    joint_head = None
    if config.chat.head:
        run = load_run_with_progress(config.chat.head, model, config.model.dtype, config.model.device)
        loaded, tokenizer, joint_head, name = run.model, run.tokenizer, run.head, run.info["model"]
    else:
        name = config.model.name
        loaded, tokenizer = load_model_with_progress(name, config.model.dtype, config.model.device)
    session = ChatSession(
        loaded, tokenizer, config.generation, config.chat.system, config.chat.format, name,
        head=joint_head, head_mode=config.chat.head_mode, tnot=config.tnot if config.chat.tnot else None,
    )
    if prompt is not None:
        resolved = settings("chat", config, model=name, dtype=config.model.dtype, seed=config.generation.seed)
        _one_shot(session, prompt, json_path, resolved)
    else:
        _repl(session, name)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _one_shot(session, prompt: str, json_path=None, resolved=None) -> None:
    """The answer goes to stdout alone, so it can be piped; the stats line goes to stderr. With `--json -`
    stdout carries the JSON alone (the reply inside it)."""
    from tjdkit.fileio import is_stdout
    from tjdkit.ui.chat import reply_stats_line
    from tjdkit.ui.tnot import tnot_trace

    to_json_only = is_stdout(json_path)
    reply = session.reply(prompt.strip(), on_text=None if to_json_only else _write)
    if not to_json_only:
        _write("\n")
    write_json(json_path, {"prompt": prompt.strip(), "reply": reply_json(reply), "settings": resolved})
    stderr().print(reply_stats_line(reply))
    if reply.tnot is not None:
        stderr().print(tnot_trace(reply.tnot, session.tokenizer))
    if reply.interrupted:
        raise typer.Exit(130)


def reply_json(reply) -> dict:
    """A reply's text and numbers (whatever plain fields it has), for --json."""
    import dataclasses

    if dataclasses.is_dataclass(reply):
        fields = {f.name: getattr(reply, f.name) for f in dataclasses.fields(reply)}
    else:
        fields = dict(vars(reply))
    plain = {key: value for key, value in fields.items() if isinstance(value, (str, int, float, bool, type(None), list))}
    if hasattr(reply, "tokens_per_second"):
        plain["tokens_per_second"] = reply.tokens_per_second
    return plain


def _repl(session, model_name: str) -> None:
    from rich.markup import escape

    from tjdkit.errors import TjdkitError
    from tjdkit.ui.chat import reply_stats_line, tnot_settings_text
    from tjdkit.ui.tnot import tnot_trace

    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    console = stderr()
    help_line = f"{HELP_LINE}, {TNOT_HELP}" if session.tnot is not None else HELP_LINE
    console.print(f"[bold]tjdkit chat[/] · {model_name} · format {session.format} · [dim]{help_line}[/]")
    if session.tnot is not None:
        console.print(f"[dim]TNOT: {tnot_settings_text(session.tnot)}[/]")
    show_trace = True
    if session.format == "raw":
        console.print("[dim]raw format: each line is continued as plain text, without history "
                      "(pretrained model; --format gemma for chat turns)[/]")
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            _write("\n")
            return
        except KeyboardInterrupt:
            _write("\n")
            console.print("[dim](use /exit or Ctrl-D to leave)[/]")
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            session.reset()
            console.print("[dim]history cleared[/]")
            continue
        if text == "/trace" and session.tnot is not None:
            show_trace = not show_trace
            console.print(f"[dim]entropy trace {'on' if show_trace else 'off'}[/]")
            continue
        if text.startswith("/"):
            console.print(f"[dim]unknown command {text}: {help_line}[/]")
            continue
        try:
            reply = session.reply(check_text(text, "that line"), on_text=_write)
        except TjdkitError as exc:  # e.g. a prompt too long for the context: say so and keep the session
            console.print(f"[red]error:[/] {escape(str(exc))}")
            continue
        _write("\n")
        console.print(reply_stats_line(reply))
        if reply.tnot is not None and show_trace:
            console.print(tnot_trace(reply.tnot, session.tokenizer))

