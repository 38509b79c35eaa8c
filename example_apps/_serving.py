"""How the example apps are served: ``python -m example_apps.<service> [--port N | --fd N]``.

The WSGI apps (storefront, inventory) run under gunicorn (one pre-forked ``gthread`` worker:
the app, and with it the tracing client, is imported in the worker, as in production); the
ASGI app (pricing) runs under uvicorn. ``--fd`` serves on an already listening socket
inherited from the parent (the demo binds every port itself, so there is no race for free
ports); ``--port`` binds one.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["parse_args", "serve_asgi", "serve_wsgi"]


def parse_args(service: str, default_port: int, argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line every example app accepts."""
    parser = argparse.ArgumentParser(
        prog=f"python -m example_apps.{service}", description=f"Run the {service} example app."
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=default_port, help=f"default {default_port}")
    parser.add_argument("--fd", type=int, default=None, help="serve on this listening socket")
    args = parser.parse_args(argv)
    _die_with_parent()
    return args


def _die_with_parent() -> None:
    """Under the demo (Linux): get SIGTERM when the demo dies, even by SIGKILL."""
    parent = os.environ.get("STM_DEMO_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the demo died before prctl: too late for the signal
        sys.exit("the demo that started this app is gone")


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def serve_wsgi(target: str, args: argparse.Namespace, *, threads: int = 8) -> None:
    """Serve ``module:attr`` with gunicorn until SIGTERM / SIGINT."""
    from gunicorn.app.base import BaseApplication

    bind = f"fd://{args.fd}" if args.fd is not None else f"{args.host}:{args.port}"
    options: dict[str, Any] = {
        "bind": [bind],
        "workers": 1,
        "worker_class": "gthread",
        "threads": threads,
        "graceful_timeout": 5,
        "timeout": 30,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": "warning",
        "preload_app": False,  # import the app (and start tracing) in the worker
        "proc_name": target,
    }

    class Application(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)
            # gunicorn >= 25 opens a control socket at one fixed path per user: two servers
            # would fight over it
            if "control_socket_disable" in self.cfg.settings:
                self.cfg.set("control_socket_disable", True)

        def load(self) -> Any:
            return _load(target)

    sys.argv = sys.argv[:1]  # gunicorn must not parse our options
    Application().run()


def serve_asgi(target: str, args: argparse.Namespace) -> None:
    """Serve ``module:attr`` with uvicorn until SIGTERM / SIGINT."""
    import uvicorn

    app = _load(target)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        access_log=True,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    if args.fd is not None:
        server.run(sockets=[socket.socket(fileno=args.fd)])
    else:
        server.run()
