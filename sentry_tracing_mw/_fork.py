"""What a forked child runs before anything else: new random state, its own sender thread.

``os.register_at_fork`` covers ``os.fork()`` (gunicorn, ``multiprocessing``). uWSGI forks
its workers in C, which runs no Python fork hook unless ``--py-call-osafterfork`` is set;
under uWSGI the hooks also run from its post-fork hook (chained: a hook the app or
``uwsgidecorators`` set keeps running). Whichever comes first runs them, once per process.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "CHECK_PID",
    "chain_uwsgi",
    "check",
    "in_forked_child",
    "renew_in_child",
    "uwsgi_module",
]

logger = logging.getLogger("sentry_tracing_mw")

_hooks: list[Callable[[], None]] = []
_pid = os.getpid()  # the process the hooks last ran for (or were set up in)
_lock = threading.RLock()
_checking = False  # check() is running the hooks (on the thread holding _lock)


def uwsgi_module() -> Any:
    """uWSGI's own ``uwsgi`` module, importable only inside a uWSGI process; else None."""
    try:
        import uwsgi
    except ImportError:
        return None
    return uwsgi


#: Under uWSGI an app may replace the post-fork hook (``uwsgi.post_fork_hook = ...``):
#: then ``check()`` at the start of each unit of work catches a fork no hook reported.
CHECK_PID = uwsgi_module() is not None


class _Renewable(Protocol):
    def _reset_after_fork(self) -> None: ...


_renewed: weakref.WeakSet[_Renewable] = weakref.WeakSet()


def in_forked_child(hook: Callable[[], None]) -> None:
    """Run ``hook`` in every forked child, once, before the child runs app code."""
    _hooks.append(hook)


def new_lock_in_child(namespace: dict[str, Any], name: str, factory: Callable[[], Any]) -> None:
    """Replace the module lock ``namespace[name]`` with ``factory()`` in every forked child:
    a thread of the parent may have held it at the fork (inside ``init()``), and no thread
    of the child would ever release it."""
    _hooks.append(lambda: namespace.__setitem__(name, factory()))


def renew_in_child(obj: _Renewable) -> None:
    """Call ``obj._reset_after_fork()`` in every forked child while ``obj`` lives (new
    locks, no inherited queue or thread), before the hooks of ``in_forked_child``."""
    _renewed.add(obj)


def _renew_all() -> None:
    for obj in list(_renewed):
        try:
            obj._reset_after_fork()
        except Exception:  # never break the child
            logger.debug("renewing %r after a fork failed", obj, exc_info=True)


_hooks.append(_renew_all)


def check() -> None:
    """Run the hooks now if this process is a fork no hook reported (uWSGI only)."""
    global _checking
    if os.getpid() != _pid:
        with _lock:  # the child's other threads wait until its hooks have run
            if _checking:  # re-entered on this thread (a signal handler): go on
                return
            _checking = True
            try:
                _run()
            finally:
                _checking = False


def _run() -> None:
    global _pid
    pid = os.getpid()
    if pid == _pid:  # ran already in this process (both uWSGI's hook and Python's)
        return
    for hook in _hooks:
        try:
            hook()
        except Exception:  # never break the child
            logger.debug("an after-fork hook failed", exc_info=True)
    _pid = pid  # after the hooks: a thread that checks meanwhile waits for them


def chain_uwsgi() -> None:
    """Under uWSGI: run the hooks from its post-fork hook too (idempotent; ``init()``
    calls it again, after the app may have set a hook of its own or loaded
    ``uwsgidecorators``, which replace the one set at import)."""
    uwsgi = uwsgi_module()
    if uwsgi is None:
        return
    try:
        decorators = sys.modules.get("uwsgidecorators")
        chain = getattr(decorators, "postfork_chain", None)
        if isinstance(chain, list) and getattr(uwsgi, "post_fork_hook", None) is getattr(
            decorators, "postfork_chain_hook", None
        ):  # the app uses uwsgidecorators: join its chain
            if _run not in chain:
                chain.append(_run)
            return
        previous = getattr(uwsgi, "post_fork_hook", None)
        if getattr(previous, "_stm_runs_hooks", False):
            return

        def post_fork() -> None:
            _run()
            if previous is not None:
                previous()

        post_fork._stm_runs_hooks = True  # type: ignore[attr-defined]
        uwsgi.post_fork_hook = post_fork
    except Exception:  # pragma: no cover - an unusual uWSGI build
        logger.debug("cannot chain uWSGI's post-fork hook", exc_info=True)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_run)
chain_uwsgi()
