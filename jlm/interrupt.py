"""Ctrl-C that always stops the command line, and never in the middle of a checkpoint save.

Python's own SIGINT handler raises KeyboardInterrupt in whatever Python code runs at that moment.
When that is a garbage-collection callback (JAX registers one) or a `__del__`, Python prints
"Exception ignored in ..." and carries on: the interrupt is lost and the run goes to its end.
`guard()` installs a handler that, there, asks again a moment later instead; and inside
`critical()` (an orbax save) it waits until the section ends. The CLI then exits with status 130.
"""
from __future__ import annotations

import _thread
import contextlib
import gc
import signal
import threading
import weakref

_state = {"critical": 0, "pending": False, "retry": None}


def _swallowed_here(frame) -> bool:
    """Whether an exception raised in `frame` would be swallowed: it runs in a gc callback, a
    `__del__` or a weakref finalizer."""
    unsafe = {getattr(cb, "__code__", None) for cb in gc.callbacks} | {weakref.finalize.__call__.__code__}
    while frame is not None:
        if frame.f_code in unsafe or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum, frame) -> None:
    if _state["critical"]:
        _state["pending"] = True  # raised when the critical section ends
        return
    if _swallowed_here(frame):
        _state["retry"] = threading.Timer(0.02, _retry)  # runs this handler again, elsewhere
        _state["retry"].start()
        return
    raise KeyboardInterrupt


def _retry() -> None:
    _state["retry"] = None
    _thread.interrupt_main()


@contextlib.contextmanager
def guard():
    """Install the handler for the duration (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        retry, _state["retry"] = _state["retry"], None
        if retry is not None:
            retry.cancel()
        signal.signal(signal.SIGINT, previous)
    if retry is not None:  # a Ctrl-C still waiting to be raised when the block ended: not lost either
        raise KeyboardInterrupt


@contextlib.contextmanager
def critical():
    """Hold a Ctrl-C that arrives inside the block until the block is done (under `guard`)."""
    _state["critical"] += 1
    try:
        yield
    finally:
        _state["critical"] -= 1
        if not _state["critical"] and _state["pending"]:
            _state["pending"] = False
            raise KeyboardInterrupt
