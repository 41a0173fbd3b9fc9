"""A wall-clock bound on a blocking call that the library itself may fail to bound.

Driver-level timeouts are the first line (they stop the work); this is the backstop: whatever
a driver, a network file system or a bug does, the cycle gets its answer, or `SourceTimeout`,
by the deadline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from rorfeed.errors import SourceTimeout

T = TypeVar("T")


def run_with_deadline(fn: Callable[[], T], seconds: float, what: str) -> T:
    """Return `fn()`, or raise `SourceTimeout` naming `what` once `seconds` have passed.

    Exceptions raised by `fn` reach the caller unchanged. A call that overruns is abandoned,
    not killed (Python cannot kill a thread): it runs on in a daemon thread, so that it can
    neither block the cycle nor keep the process from exiting.
    """
    future: Future[T] = Future()

    def work() -> None:
        future.set_running_or_notify_cancel()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 — handed to the caller through the future
            future.set_exception(exc)
        else:
            future.set_result(result)

    # A plain daemon thread, not a ThreadPoolExecutor: the executor's workers are joined at
    # interpreter exit, so one hung driver call would keep `rorfeed` from ever stopping.
    threading.Thread(target=work, name=f"rorfeed-deadline: {what}", daemon=True).start()
    try:
        return future.result(timeout=seconds)
    except TimeoutError:
        # `fn` may itself raise TimeoutError (socket.timeout is one), or finish as the wait
        # expires: a finished call's own outcome wins.
        if future.done():
            return future.result()
        raise SourceTimeout(f"{what}: no answer within {seconds:g} s") from None
