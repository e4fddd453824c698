"""How zoo tells the user something: the `zoo` logger, shown on stderr through rich.

Library code only logs (`log = get_logger(__name__)`: info for what the work is doing, warning for
something skipped or doubtful). Nothing is shown until an application calls `configure`: the CLI
does, and so do the benchmarks, so importing zoo into another program adds no output beyond
warnings. Progress bars (zoo.progress) follow the same switch: quiet and JSON modes are one
`configure(logging.WARNING)` (or `quiet()`), not a flag passed down every call.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.text import Text

ROOT = "zoo"
_console = Console(stderr=True, soft_wrap=True, highlight=False)
_STYLES = {logging.WARNING: ("Warning: ", "yellow"), logging.ERROR: ("Error: ", "red")}


def get_logger(name: str) -> logging.Logger:
    """The logger of a zoo module (pass __name__); every one of them is under `zoo`."""
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")


def console() -> Console:
    """The stderr console that log lines and progress bars share, so a line never tears a bar."""
    return _console


class RichLineHandler(logging.Handler):
    """One plain line per record, never wrapped (tests and log files search them); warnings marked.

    Written instead of rich.logging.RichHandler, whose columns (time, level, path) wrap messages
    at the terminal width.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            prefix, style = _STYLES.get(min(record.levelno, logging.ERROR), ("", ""))
            if record.levelno >= logging.WARNING and not prefix:
                prefix, style = _STYLES[logging.WARNING]
            text = Text(prefix, style=style) + Text(self.format(record))
            _console.print(text, soft_wrap=True)
        except Exception:  # a broken stderr must not stop the work
            self.handleError(record)


def configure(level: int = logging.INFO) -> None:
    """Show zoo's log lines (and progress bars, at INFO) on stderr from now on."""
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if isinstance(h, RichLineHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(RichLineHandler())
    logger.setLevel(level)
    logger.propagate = False


def is_configured() -> bool:
    return any(isinstance(h, RichLineHandler) for h in logging.getLogger(ROOT).handlers)


def shows_progress() -> bool:
    """Progress bars appear where an application asked for info lines."""
    return is_configured() and logging.getLogger(ROOT).isEnabledFor(logging.INFO)


@contextmanager
def quiet(level: int = logging.WARNING) -> Iterator[None]:
    """Only `level` and above inside the block (JSON output, processes other than rank 0)."""
    logger = logging.getLogger(ROOT)
    old = logger.level
    logger.setLevel(max(level, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(old)
