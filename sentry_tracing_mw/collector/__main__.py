"""Command line: ``python -m sentry_tracing_mw.collector [serve|show] ...``."""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence

from .store import DEFAULT_MAX_ENVELOPES

__all__ = ["main"]

DEFAULT_DB = "traces.sqlite3"


def _int_between(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high`` (no upper bound if None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
        if value < low or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"{value} is not {bounds}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sentry_tracing_mw.collector",
        description="Local Sentry-compatible collector with a trace viewer.",
    )
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="receive envelopes and serve the viewer (default)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=_int_between(0, 65535), default=8969, help="port (default 8969, 0 = any)"
    )
    serve.add_argument("--db", default=DEFAULT_DB, help=f"SQLite file (default {DEFAULT_DB})")
    serve.add_argument("--key", default="public", help="accepted DSN public key (default public)")
    serve.add_argument(
        "--rate-limit",
        action="append",
        default=[],
        metavar="SECONDS:CATEGORIES",
        help="answer 429 for these categories, e.g. 60:transaction or 30:error;span "
        "(repeatable; no categories = all)",
    )
    serve.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name the viewer also answers when bound to loopback, e.g. a reverse "
        "proxy's on this machine (repeatable; default: loopback names only)",
    )
    serve.add_argument(
        "--max-envelopes",
        type=_int_between(0),
        default=DEFAULT_MAX_ENVELOPES,
        metavar="N",
        help="keep the newest N envelopes' traces, errors and reports, dropping older ones "
        f"(default {DEFAULT_MAX_ENVELOPES}; 0 = keep everything)",
    )
    serve.add_argument("--quiet", action="store_true", help="do not log each stored envelope")
    show = sub.add_parser("show", help="print stored traces as trees")
    show.add_argument("trace_id", nargs="?", help="trace id (or a unique prefix)")
    show.add_argument("--db", default=DEFAULT_DB, help=f"SQLite file (default {DEFAULT_DB})")
    show.add_argument(
        "--limit", type=_int_between(1), default=10, help="recent traces to list (default 10)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    if not args_in or (args_in[0] not in ("serve", "show", "-h", "--help")):
        args_in.insert(0, "serve")
    args = _parser().parse_args(args_in)
    if args.command == "show":
        from .show import show

        try:
            code = show(args.db, args.trace_id, sys.stdout, limit=args.limit)
            sys.stdout.flush()
        except BrokenPipeError:  # piped into head: the reader has what it wanted
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # no second error at exit's flush
            return 1
        return code
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    try:
        from .server import Collector, parse_rate_limit
    except ImportError as exc:
        print(
            f"the collector needs its web stack: pip install 'sentry-tracing-mw[collector]' "
            f"({exc})",
            file=sys.stderr,
        )
        return 2
    try:
        limits = [parse_rate_limit(text) for text in args.rate_limit]
    except ValueError as exc:
        print(f"--rate-limit: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        collector = Collector(
            args.db,
            host=args.host,
            port=args.port,
            key=args.key,
            rate_limits=limits,
            allowed_hosts=args.allow_host,
            max_envelopes=args.max_envelopes or None,
        )
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:
        if isinstance(exc, sqlite3.OperationalError):  # a missing folder, no permission
            print(f"cannot open --db {args.db!r}: {exc}", file=sys.stderr)
        else:  # not SQLite, or SQLite holding another program's tables
            print(f"--db {args.db!r} is not a collector database ({exc})", file=sys.stderr)
        return 2
    print(
        f"sentry-tracing-mw collector on {collector.url}\n"
        f"  DSN     {collector.dsn(1)}\n"
        f"  viewer  {collector.url}/\n"
        f"  db      {args.db}"
        + (f"\n  rate limits {', '.join(r.header() for r in limits)}" if limits else ""),
        flush=True,
    )
    try:
        collector.serve_forever()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
