"""Ctrl-C that keeps complete work: the first SIGINT (or SIGTERM) asks long loops to stop after the
current step, so what is finished gets written and the job can resume; a second Ctrl-C stops at once."""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
import threading
from collections.abc import Iterator


class StopFlag:
    """Set by the signal handler, polled by the loops between steps."""

    def __init__(self) -> None:
        self.requested = False


_FLAG = StopFlag()


def stop_requested() -> bool:
    """True once Ctrl-C was pressed inside `graceful_stop`."""
    return _FLAG.requested


@contextlib.contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """Within this block the first Ctrl-C or SIGTERM only sets the flag (one line on stderr); the next
    Ctrl-C raises KeyboardInterrupt as usual. Outside the main thread it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield _FLAG
        return

    def ask(signum: int, frame: object) -> None:
        if _FLAG.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        _FLAG.requested = True
        print("\nstopping after the current step (Ctrl-C again to stop at once) ...", file=sys.stderr, flush=True)

    old = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield _FLAG
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _FLAG.requested = False


def resume_command(argv: list[str]) -> str:
    """The command line that continues interrupted work: the same one without --overwrite (which
    would start over), with --resume for `train-awp`."""
    args = [a for a in argv if a != "--overwrite"]
    if args and args[0] == "train-awp" and "--resume" not in args:
        args.append("--resume")
    return shlex.join(["landscape", *args])
