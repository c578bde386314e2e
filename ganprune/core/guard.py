"""Plugin code (agents, recipes) runs under a guard: its mistakes are the plugin's, said in one line.

Without it a plugin's ``sys.exit(0)`` ended a run with exit status 0 and no result, an ``ask()`` that
never returned hung the search forever, and a wrong return type surfaced as a TypeError deep inside.
"""
from __future__ import annotations

from typing import Callable

from ganprune.core.errors import UserError


class PluginTimeout(UserError):
    """A plugin call that did not return in time: it may still be running, so the run cannot go on."""


DEFAULT_TIMEOUT = 600.0   # seconds one agent call may take (agent_timeout); generous: built-in agents take ms


def guarded_call(who: str, what: str, fn: Callable, timeout: float | None = None, expect: type | None = None):
    """``fn()`` as plugin code is run: any exception, ``SystemExit`` included (``sys.exit(0)`` in a plugin
    is not success), becomes one ``UserError`` line naming ``who`` and ``what``; a call that does not return
    within ``timeout`` seconds (None or 0: no limit) fails instead of hanging the run; a result that is not
    an ``expect`` instance is refused. With a timeout the call runs in a daemon thread (Python cannot stop a
    thread, so a hung call is abandoned; the run must end, which the caller's error does). A real Ctrl-C
    still interrupts: it arrives in the waiting main thread."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as exc:   # noqa: B036 - plugin code: SystemExit/KeyboardInterrupt are errors too
            outcome["error"] = exc

    if timeout:
        import threading
        worker = threading.Thread(target=target, name=f"ganprune {who} {what}", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            raise PluginTimeout(f"{who}: {what} did not return within {timeout:g} s; the plugin hangs or is "
                                "too slow (fix it, or raise agent_timeout)")
    else:
        target()
    exc = outcome.get("error")
    if isinstance(exc, UserError):
        raise UserError(str(exc) if str(exc).startswith(who) else f"{who}: {exc}") from None
    if isinstance(exc, SystemExit):
        raise UserError(f"{who}: {what} called sys.exit({exc.code!r}); a plugin must return or raise, "
                        "not end the process") from None
    if exc is not None:
        text = str(exc).replace("\n", " ")
        raise UserError(f"{who}: {what} raised {type(exc).__name__}" + (f": {text}" if text else "")) from None
    value = outcome.get("value")
    if expect is not None and not isinstance(value, expect):
        raise UserError(f"{who}: {what} returned {type(value).__name__}, expected {expect.__name__}")
    return value
