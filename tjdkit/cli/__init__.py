"""The `tjdkit` command. Start-up imports only typer and rich: each command imports its core lazily."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import typer

from tjdkit import __version__
from tjdkit.cli import bench_cmd, chat_cmd, eval_cmd, factorize_cmd, models_cmd, recipes_cmd, tnot_cmd, train_cmd
from tjdkit.errors import TjdkitError
from tjdkit.fileio import USER_ERRNOS

app = typer.Typer(
    name="tjdkit",
    help="Tensor methods that make language models faster and better.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(recipes_cmd.app, name="recipes")
app.add_typer(models_cmd.app, name="models")
app.command("train", help=train_cmd.__doc__, epilog=train_cmd.EXAMPLES)(train_cmd.train)
app.command("eval", help=eval_cmd.__doc__, epilog=eval_cmd.EXAMPLES)(eval_cmd.evaluate)
app.command("chat", help=chat_cmd.__doc__, epilog=chat_cmd.EXAMPLES)(chat_cmd.chat)
app.command("bench", help=bench_cmd.__doc__, epilog=bench_cmd.EXAMPLES)(bench_cmd.bench)
app.command("factorize", help=factorize_cmd.__doc__, epilog=factorize_cmd.EXAMPLES)(factorize_cmd.factorize)
app.command("tnot", help=tnot_cmd.__doc__, epilog=tnot_cmd.EXAMPLES)(tnot_cmd.tnot)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tjdkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Tensor methods that make language models faster and better."""


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _click_exceptions():
    """Recent typer vendors click as typer._click; older typer uses click itself."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def _abort(click) -> type:
    """click's Abort (Ctrl-C at a prompt); recent typer defines its own outside the vendored click."""
    if hasattr(click, "Abort"):
        return click.Abort
    from typer.exceptions import Abort

    return Abort


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run the CLI; user errors end as one line on stderr with exit code 2."""
    click = _click_exceptions()
    command = typer.main.get_command(app)
    try:
        code = command.main(args=list(argv) if argv is not None else None, prog_name="tjdkit", standalone_mode=False)
    except TjdkitError as exc:
        fail(str(exc))
    except click.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(0)
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        fail(f"{exc.format_message()}{hint}")
    except click.ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
    except (_abort(click), KeyboardInterrupt):
        print(file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `tjdkit ... | head`: the reader left; nothing more to say
        sys.stderr.close()
        sys.exit(0)
    except OSError as exc:  # a full disk or a read-only place met by a write no check could foresee
        if exc.errno not in USER_ERRNOS:
            raise
        fail(f"cannot write {exc.filename or 'a file'}: {exc.strerror}")
    sys.exit(code if isinstance(code, int) else 0)
