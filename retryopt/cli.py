"""The ``retryopt`` console command.

Each subcommand lives in its own module under :mod:`retryopt.commands` and keeps its heavy
imports (pandas, LightGBM, MLflow) inside the function, so ``retryopt --help`` stays fast.
"""

from __future__ import annotations

import importlib

import typer

from retryopt.version import __version__

# (subcommand name, module under retryopt.commands). Each module defines ``command``.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("validate", "validate"),
    ("import-stripe", "import_stripe"),
    ("train", "train"),
    ("serve", "serve"),
    ("demo", "demo"),
    ("simulate", "simulate"),
    ("backtest", "backtest"),
    ("ab-report", "ab_report"),
    ("suite", "suite"),
    ("decide", "decide"),
    ("export", "export"),
    ("store", "store"),
)

app = typer.Typer(
    name="retryopt",
    help="Open smart-retry optimizer for failed recurring card payments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help texts are plain text: "name[/version]" must not be read as Rich markup.
    rich_markup_mode=None,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"retryopt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version."
    ),
) -> None:
    """Open smart-retry optimizer for failed recurring card payments."""


for _name, _module in COMMANDS:
    app.command(_name)(importlib.import_module(f"retryopt.commands.{_module}").command)


def main() -> None:
    """Run the ``retryopt`` command line."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
