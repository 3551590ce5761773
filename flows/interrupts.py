"""Interrupts that wait for a compiled call to return.

A signal handler that raises (Ctrl-C's ``KeyboardInterrupt``, ``main_density.py``'s SIGTERM) can fire
while ``torch.compile`` is tracing or compiling; an exception raised there aborts the whole process from
C++ ("trying to set the current FakeTensorMode, but one already exists") instead of reaching the
run's handler, which keeps the last checkpoint. Handlers call :func:`interrupt`; the compiled call runs
inside :func:`deferred`, and an interrupt that arrives there is raised as soon as the call returns.
"""

from __future__ import annotations

import contextlib

_depth = 0
_pending: BaseException | None = None


def interrupt(exc: BaseException) -> None:
    """Raise ``exc`` now, or, inside :func:`deferred`, when the deferred block ends."""
    global _pending
    if _depth:
        _pending = exc
        return
    raise exc


@contextlib.contextmanager
def deferred():
    """A block in which interrupts wait (see the module docstring)."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if not _depth and _pending is not None:
        exc, _pending = _pending, None
        raise exc
