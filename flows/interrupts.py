"""Interrupts that are never lost.

A signal handler that raises (Ctrl-C's ``KeyboardInterrupt``, ``main_density.py``'s SIGTERM) runs at
whatever Python code the main thread is executing, and two places there are unsafe:

* ``torch.compile`` tracing or compiling: an exception raised there aborts the whole process from
  C++ ("trying to set the current FakeTensorMode, but one already exists") instead of reaching the
  run's handler, which keeps the last checkpoint. The compiled call runs inside :func:`deferred`; an
  interrupt that arrives there waits until the block ends and is raised then.
* a weakref callback, ``__del__`` or garbage-collector callback (torch's own caches run such callbacks
  all the time): Python prints "Exception ignored in ..." and drops the exception, and the run would
  go on as if the signal had never come. Every interrupt is therefore also recorded, and :func:`check`,
  called at the start of each training step and each ODE evaluation, raises one that was dropped.

Whoever finally handles the interrupt calls :func:`clear`.
"""

from __future__ import annotations

import contextlib

_depth = 0
_pending: BaseException | None = None


def interrupt(exc: BaseException) -> None:
    """Record ``exc`` and raise it now, or, inside :func:`deferred`, when the deferred block ends."""
    global _pending
    _pending = exc
    if not _depth:
        raise exc


def check() -> None:
    """Raise a recorded interrupt (one that a callback swallowed); a no-op inside :func:`deferred`."""
    global _pending
    if _pending is not None and not _depth:
        exc, _pending = _pending, None
        raise exc


def clear() -> None:
    """Forget a recorded interrupt (its handler has dealt with it)."""
    global _pending
    _pending = None


@contextlib.contextmanager
def deferred():
    """A block in which interrupts wait (see the module docstring); one that arrived is raised at its end,
    in place of any exception leaving the block."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        check()
