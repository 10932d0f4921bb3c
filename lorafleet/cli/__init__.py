"""The `lorafleet` command: one typer app composed of one module per subcommand group.

Commands are thin: parse arguments, call a library function, render the result. Data goes to
stdout, messages to stderr. Known errors, and files that cannot be read or written (OSError), print
one line (and a hint) and exit 1; a traceback appears only with LORAFLEET_DEBUG=1.
"""

from __future__ import annotations

import os
import sys

import typer

from lorafleet import __version__
from lorafleet.cli import (
    base,
    controller,
    cost,
    data,
    eval,
    feedback,
    finetune,
    gateway,
    monitor,
    registry,
    route,
    serve,
    train,
)
from lorafleet.errors import LorafleetError

app = typer.Typer(
    name="lorafleet",
    help="From a labelled dataset to a fine-tuned LoRA adapter in production, and keeping it healthy there.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(base.app, name="base")
app.add_typer(data.app, name="data")
app.command(name="train")(train.train)
app.command(name="eval")(eval.evaluate)
app.command(name="baseline")(eval.baseline)
app.add_typer(registry.app, name="registry")
app.command(name="finetune")(finetune.finetune)
app.add_typer(serve.app, name="serve")
app.command(name="gateway")(gateway.gateway)
app.command(name="controller")(controller.controller)
app.add_typer(route.app, name="route")
app.add_typer(monitor.app, name="monitor")
app.add_typer(feedback.app, name="feedback")
app.command(name="cost")(cost.cost)


def _version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """lorafleet: check data, train, evaluate, register, serve, route, roll out and monitor LoRA adapters."""


def main() -> None:
    try:
        # Without standalone mode click returns the exit code of typer.Exit instead of exiting.
        code = app(standalone_mode=False)
    except LorafleetError as exc:
        if os.environ.get("LORAFLEET_DEBUG") == "1":
            raise
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): nothing left to say, and nowhere to say it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as exc:  # a file that cannot be read or written: no bug of ours, no traceback
        if os.environ.get("LORAFLEET_DEBUG") == "1":
            raise
        # A rename's or copy's target (filename2) is the file the user named.
        name = exc.filename2 if exc.filename2 is not None else exc.filename
        reason = exc.strerror or str(exc)
        print(f"error: {name}: {reason}" if name is not None else f"error: {reason}", file=sys.stderr)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(1)
    except typer.TyperException as exc:  # usage errors (typer's own click) arrive here in non-standalone mode
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            print(f"Error: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
