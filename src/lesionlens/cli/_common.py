"""Shared pieces of the CLI boundary: one console, one way to report errors."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lesionlens.errors import LesionLensError

# Piped output (logs, CI) gets a wide page instead of rich's 80-column default, so that tables
# do not fold file paths and UIDs mid-word; a terminal or an explicit COLUMNS wins.
_PIPE_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
console = Console(width=_PIPE_WIDTH)
err_console = Console(stderr=True, width=_PIPE_WIDTH)

T = TypeVar("T")

EXIT_USER_ERROR = 2


@contextmanager
def error_boundary() -> Iterator[None]:
    """Turn a :class:`LesionLensError` into one red line on stderr and exit code 2."""
    try:
        yield
    except LesionLensError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


def progress(transient: bool = False) -> Progress:
    """A rich progress bar that stays quiet when stderr is not a terminal."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=transient,
        disable=not sys.stderr.isatty(),
    )


def guarded(fn: Callable[[], T]) -> T:
    with error_boundary():
        return fn()
