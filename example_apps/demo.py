#!/usr/bin/env python3
"""See distributed tracing work: ``python3 example_apps/demo.py`` (add ``--serve`` to stay up).

What it does:

1. If the packages it needs are missing, it creates ``.venv-demo/`` next to ``example_apps/``,
   runs ``pip install -e ".[all]" gunicorn`` in it, and runs itself again with that venv's
   Python (where ``venv`` is unavailable, e.g. Debian without ``python3-venv``, it installs into
   ``.venv-demo/site`` with ``pip install --target`` instead). ``--no-bootstrap`` turns this off.
2. Starts the local collector in this process, and the three example apps as subprocesses on
   free 127.0.0.1 ports: storefront (Flask, gunicorn), pricing (FastAPI, uvicorn) and
   inventory (Django + SQLite, gunicorn). Each app runs in its own process group, so stopping
   the demo stops everything it started (on normal exit, errors, Ctrl-C and SIGTERM; on Linux
   the apps also die with the demo if it is killed).
3. Sends a bounded burst of checkouts (some fail on purpose), waits until the collector has
   received their transactions and errors, prints the stitched tree of one successful and one
   failing trace, and the trace viewer's URL.
4. Stops everything and exits, or with ``--serve`` keeps serving until Ctrl-C.

Only the standard library is imported at the top: the bootstrap runs before anything else.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV = REPO / ".venv-demo"
TARGET_DIR = VENV / "site"

if __name__ == "__main__" and sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    # run as a script: import ``example_apps`` and the package from the checkout
    sys.path[0] = str(REPO)

#: modules the demo and the apps import (module -> what provides it)
REQUIRED_MODULES = {
    "flask": "flask",
    "fastapi": "fastapi",
    "django": "django",
    "httpx": "httpx",
    "requests": "requests",
    "starlette": "starlette",
    "uvicorn": "uvicorn",
    "gunicorn": "gunicorn",
}
PIP_REQUIREMENTS = ["-e", f"{REPO}[all]", "gunicorn>=21"]
BOOTSTRAP_ENV = "STM_DEMO_BOOTSTRAPPED"

#: the burst: cart ids and the status the storefront answers with
BURST: tuple[tuple[str, int], ...] = (
    ("1001", 200),
    ("1002", 200),
    ("promo-trace20", 200),
    ("1003", 200),
    ("promo-spring2019", 502),  # expired coupon: pricing crashes, storefront reports it
    ("1004", 200),
    ("ghost-7", 409),  # unknown product: inventory says 404, no quote
    ("promo-welcome10", 200),
    ("1005", 200),
    ("promo-summer2020", 502),
    ("1006", 200),
    ("1007", 200),
)
#: transactions and error events each answer produces
EXPECTED_UNITS = {200: 3, 502: 3, 409: 2}
EXPECTED_ERRORS = {200: 0, 502: 2, 409: 0}

_META_TRACE = re.compile(r'<meta name="sentry-trace" content="([0-9a-f]{32})-([0-9a-f]{16})')


# -- bootstrap ---------------------------------------------------------------------------


def missing_modules() -> list[str]:
    """Required modules this interpreter cannot import."""
    return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]


def _venv_python() -> Path:
    if os.name == "nt":
        return VENV / "Scripts" / "python.exe"
    return VENV / "bin" / "python"


def _run(cmd: Sequence[str]) -> None:
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def bootstrap(argv: Sequence[str]) -> None:
    """Install what is missing into ``.venv-demo`` and re-run there; returns if nothing is."""
    missing = missing_modules()
    if not missing:
        return
    if os.environ.get(BOOTSTRAP_ENV):
        sys.exit(f"demo: still missing after installing: {', '.join(missing)}")
    python = _venv_python()
    env = dict(os.environ, **{BOOTSTRAP_ENV: "1"})
    this = str(Path(__file__).resolve())
    target_path = os.pathsep.join(
        p for p in (str(REPO), str(TARGET_DIR), env.get("PYTHONPATH", "")) if p
    )
    if python.exists() and _has_everything(python):
        print(f"demo: this Python lacks {', '.join(missing)}; using {VENV}", flush=True)
        _exec([str(python), this, *argv], env)
    if TARGET_DIR.is_dir() and _has_everything(Path(sys.executable), target_path):
        print(f"demo: this Python lacks {', '.join(missing)}; using {TARGET_DIR}", flush=True)
        _exec([sys.executable, this, *argv], dict(env, PYTHONPATH=target_path))
    print(f"demo: missing {', '.join(missing)}; installing into {VENV} (once)", flush=True)
    pip = ("-m", "pip", "install", "--disable-pip-version-check", "-q")
    try:
        if not python.exists():
            _run([sys.executable, "-m", "venv", str(VENV)])
        use_venv = True
    except (subprocess.CalledProcessError, OSError) as exc:
        # no ``venv``/``ensurepip`` (Debian without python3-venv): plain ``pip --target``
        print(f"demo: cannot create a venv ({exc}); using pip install --target", flush=True)
        shutil.rmtree(VENV, ignore_errors=True)
        use_venv = False
    if use_venv:
        _run([str(python), *pip, *PIP_REQUIREMENTS])
        _exec([str(python), this, *argv], env)
    _run([sys.executable, *pip, "--target", str(TARGET_DIR), f"{REPO}[all]", "gunicorn>=21"])
    _exec([sys.executable, this, *argv], dict(env, PYTHONPATH=target_path))


def _has_everything(python: Path, pythonpath: str | None = None) -> bool:
    code = "import " + ", ".join(REQUIRED_MODULES) + ", sentry_tracing_mw"
    env = dict(os.environ) if pythonpath is None else dict(os.environ, PYTHONPATH=pythonpath)
    probe = subprocess.run([str(python), "-c", code], cwd=REPO, env=env, capture_output=True)
    return probe.returncode == 0


def _exec(cmd: list[str], env: dict[str, str]) -> None:
    sys.stdout.flush()
    if os.name == "nt":  # no exec on Windows: run and pass the exit code on
        sys.exit(subprocess.call(cmd, env=env))
    os.execve(cmd[0], cmd, env)


# -- processes ---------------------------------------------------------------------------


@dataclass
class Service:
    """One example app run as a subprocess on an inherited listening socket."""

    name: str
    module: str
    sock: socket.socket
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _listening_socket() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0), backlog=128)
    sock.set_inheritable(True)
    return sock


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Result:
    """One request of the burst."""

    cart_id: str
    expected: int
    status: int
    trace_id: str | None
    elapsed_ms: float
    error: str | None = None


@dataclass
class Report:
    """What a run did (the end-to-end test reads it)."""

    workdir: Path
    db: Path
    viewer_url: str = ""
    results: list[Result] = field(default_factory=list)
    ok_trace: str | None = None
    failed_trace: str | None = None
    data_complete: bool = False
    pids: set[int] = field(default_factory=set)


class Demo:
    """The collector (in this process) and the three apps (subprocesses)."""

    def __init__(
        self, workdir: Path, *, collector_port: int = 0, out: TextIO | None = None
    ) -> None:
        self.workdir = workdir
        self.db = workdir / "traces.sqlite3"
        self.collector_port = collector_port
        self.out = out if out is not None else sys.stdout
        self.collector: Any = None
        self.services: list[Service] = []
        self.pids: set[int] = set()
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    # starting -------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Start the collector and the apps; return when all answer ``/healthz``."""
        from sentry_tracing_mw.collector import Collector

        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.collector = Collector(str(self.db), port=self.collector_port).start()
        self.say(f"collector    {self.collector.url}  (DSN {self.collector.dsn(1)})")
        for name in ("inventory", "pricing", "storefront"):
            self.services.append(
                Service(
                    name,
                    f"example_apps.{name}",
                    _listening_socket(),
                    self.workdir / "logs" / f"{name}.log",
                )
            )
        by_name = {s.name: s for s in self.services}
        env = dict(os.environ)
        for key in list(env):
            if key.startswith("SENTRY_"):
                del env[key]
        env.update(
            SENTRY_DSN=self.collector.dsn(1),
            SENTRY_TRACES_SAMPLE_RATE="1.0",
            SENTRY_ENVIRONMENT="demo",
            PRICING_URL=by_name["pricing"].url,
            INVENTORY_URL=by_name["inventory"].url,
            INVENTORY_DB=str(self.workdir / "inventory.sqlite3"),
            PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
            PYTHONUNBUFFERED="1",
            STM_DEMO_PARENT_PID=str(os.getpid()),
        )
        env.pop("DJANGO_SETTINGS_MODULE", None)
        for service in self.services:
            self._spawn(service, env)
        self._wait_ready(timeout)
        for service in self.services:
            pid = service.proc.pid if service.proc else "?"
            self.say(f"{service.name:<12} {service.url}  (pid {pid}, log {service.log_path})")

    def _spawn(self, service: Service, env: dict[str, str]) -> None:
        fd = service.sock.fileno()
        service.log = open(service.log_path, "ab")  # noqa: SIM115 (closed in stop())
        with self._lock:
            if self._stopped.is_set():
                raise RuntimeError("demo stopped")
            service.proc = subprocess.Popen(
                [sys.executable, "-m", service.module, "--fd", str(fd)],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=service.log,
                stderr=subprocess.STDOUT,
                pass_fds=(fd,),
                start_new_session=True,  # own process group: stopped as a whole
            )
            self.pids.add(service.proc.pid)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.services)
        while pending:
            for service in list(pending):
                assert service.proc is not None
                if service.proc.poll() is not None:
                    raise RuntimeError(
                        f"{service.name} exited with {service.proc.returncode} while starting;"
                        f" its log ({service.log_path}):\n{service.log_tail()}"
                    )
                try:
                    with urllib.request.urlopen(service.url + "/healthz", timeout=2) as resp:
                        if resp.status == 200:
                            pending.remove(service)
                except (OSError, urllib.error.URLError):
                    pass
            if pending and time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending)
                tails = "\n".join(f"--- {s.name}:\n{s.log_tail()}" for s in pending)
                raise RuntimeError(f"not ready after {timeout:.0f}s: {names}\n{tails}")
            if pending:
                time.sleep(0.1)
        self.pids |= self.descendant_pids()

    def descendant_pids(self) -> set[int]:
        """Pids of every process the apps consist of now (group leaders and their children)."""
        found: set[int] = set()
        for service in self.services:
            if service.proc is None:
                continue
            found.add(service.proc.pid)
            try:
                import psutil
            except ImportError:
                continue
            try:
                found.update(p.pid for p in psutil.Process(service.proc.pid).children(True))
            except psutil.Error:
                pass
        return found

    # the burst ------------------------------------------------------------------------

    def burst(self, carts: Sequence[tuple[str, int]] = BURST, workers: int = 4) -> list[Result]:
        """Send the checkouts (``workers`` at a time); every request is bounded by a timeout."""
        storefront = next(s for s in self.services if s.name == "storefront")

        def one(cart: tuple[str, int]) -> Result:
            cart_id, expected = cart
            t0 = time.monotonic()
            status, body, error = 0, "", None
            try:
                with urllib.request.urlopen(
                    f"{storefront.url}/checkout/{cart_id}", timeout=20
                ) as resp:
                    status, body = resp.status, resp.read().decode("utf-8", "replace")
            except urllib.error.HTTPError as exc:
                status, body = exc.code, exc.read().decode("utf-8", "replace")
            except OSError as exc:
                error = str(exc)
            match = _META_TRACE.search(body)
            return Result(
                cart_id,
                expected,
                status,
                match.group(1) if match else None,
                (time.monotonic() - t0) * 1000.0,
                error,
            )

        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, carts))

    def wait_for_data(self, results: Sequence[Result], timeout: float = 30.0) -> bool:
        """Wait until the collector holds every transaction and error the burst caused."""
        traces = [r.trace_id for r in results if r.trace_id]
        want_units = sum(EXPECTED_UNITS.get(r.status, 1) for r in results if r.trace_id)
        want_errors = sum(EXPECTED_ERRORS.get(r.status, 0) for r in results if r.trace_id)
        if not traces:
            return False
        marks = ",".join("?" * len(traces))
        store = self.collector.store
        deadline = time.monotonic() + timeout
        while True:
            units = store.query(
                f"SELECT COUNT(*) AS n FROM units WHERE trace_id IN ({marks})", traces
            )
            errors = store.query(
                f"SELECT COUNT(*) AS n FROM errors WHERE trace_id IN ({marks})", traces
            )
            if units[0]["n"] >= want_units and errors[0]["n"] >= want_errors:
                return True
            if time.monotonic() > deadline:
                self.say(
                    f"warning: after {timeout:.0f}s the collector has {units[0]['n']} of "
                    f"{want_units} transactions and {errors[0]['n']} of {want_errors} errors"
                )
                return False
            time.sleep(0.1)

    def print_trace(self, title: str, trace_id: str) -> None:
        from sentry_tracing_mw.collector.show import show

        self.say(f"\n=== {title} ===")
        show(str(self.db), trace_id, self.out)
        self.say(f"viewer: {self.collector.url}/#/trace/{trace_id}")

    # stopping -------------------------------------------------------------------------

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every app (SIGTERM to its process group, SIGKILL after ``timeout``) and the
        collector. Idempotent; safe from signal handlers' aftermath and atexit."""
        with self._lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
        self.pids |= self.descendant_pids()
        running = [s for s in self.services if s.proc is not None]
        for service in running:
            self._signal_group(service, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for service in running:
            assert service.proc is not None
            try:
                service.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal_group(service, getattr(signal, "SIGKILL", signal.SIGTERM))
                with contextlib.suppress(subprocess.TimeoutExpired):
                    service.proc.wait(5)
        # the leader is gone; make sure nothing of its group outlives it
        for service in running:
            assert service.proc is not None
            pgid = service.proc.pid
            if os.name != "nt":
                end = time.monotonic() + 3
                while _group_alive(pgid) and time.monotonic() < end:
                    time.sleep(0.05)
                if _group_alive(pgid):
                    with contextlib.suppress(OSError):
                        os.killpg(pgid, signal.SIGKILL)
        for service in self.services:
            if service.log is not None:
                service.log.close()
            service.sock.close()
        if self.collector is not None:
            self.collector.stop()

    @staticmethod
    def _signal_group(service: Service, sig: int) -> None:
        assert service.proc is not None
        try:
            if os.name == "nt":
                service.proc.terminate()
            else:
                os.killpg(service.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


# -- the run -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 example_apps/demo.py",
        description="Start the collector and three traced example apps, send a burst of "
        "checkouts, print traces.",
    )
    parser.add_argument("--serve", action="store_true", help="keep serving until Ctrl-C")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep databases and logs here (default: a temporary directory, removed at exit)",
    )
    parser.add_argument("--port", type=int, default=0, help="collector port (default: any free)")
    parser.add_argument(
        "--no-bootstrap", action="store_true", help="never install anything; fail instead"
    )
    return parser.parse_args(argv)


def run(
    args: argparse.Namespace,
    out: TextIO | None = None,
    wait_forever: Callable[[], None] | None = None,
) -> Report:
    """Start, burst, print, then stop (after ``wait_forever`` returns when ``--serve``)."""
    out = out if out is not None else sys.stdout
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="stm-demo-")) if temporary else args.workdir
    demo = Demo(workdir, collector_port=args.port, out=out)
    report = Report(workdir=workdir, db=demo.db)
    atexit.register(demo.stop)  # last resort (an exception escaping everything below)
    keep = not temporary
    try:
        t0 = time.monotonic()
        demo.start()
        demo.say(f"all services ready in {time.monotonic() - t0:.1f}s\n")
        results = report.results = demo.burst()
        demo.say(f"sent {len(results)} checkouts to the storefront:")
        for r in results:
            mark = "" if r.status == r.expected else f"   (expected {r.expected})"
            what = r.error or f"trace {r.trace_id}"
            demo.say(f"  /checkout/{r.cart_id:<18} {r.status}  {r.elapsed_ms:7.1f}ms  {what}{mark}")
        report.data_complete = demo.wait_for_data(results)
        if not report.data_complete or any(r.status != r.expected for r in results):
            keep = True  # the apps' logs tell what happened
        ok = next((r for r in results if r.status == 200 and r.trace_id), None)
        failed = next((r for r in results if r.status >= 500 and r.trace_id), None)
        report.ok_trace = ok.trace_id if ok else None
        report.failed_trace = failed.trace_id if failed else None
        if ok and ok.trace_id:
            demo.print_trace(f"a successful checkout: /checkout/{ok.cart_id}", ok.trace_id)
        if failed and failed.trace_id:
            demo.print_trace(
                f"a failing checkout: /checkout/{failed.cart_id} ({failed.status})",
                failed.trace_id,
            )
        report.viewer_url = f"{demo.collector.url}/"
        demo.say(f"\ntrace viewer: {report.viewer_url}")
        report.pids = set(demo.pids | demo.descendant_pids())
        if args.serve:
            storefront = next(s for s in demo.services if s.name == "storefront")
            demo.say(
                f"storefront:   {storefront.url}/\n"
                f"print traces: {sys.executable} -m sentry_tracing_mw.collector show "
                f"--db {demo.db}\n"
                "serving; press Ctrl-C to stop"
            )
            (wait_forever or _wait_forever)()
    except RuntimeError:
        keep = True
        raise
    finally:
        with _shielded():
            demo.stop()
        report.pids |= demo.pids
        atexit.unregister(demo.stop)
        if keep:
            if temporary:
                demo.say(f"kept the databases and the apps' logs in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def _wait_forever() -> None:
    while True:
        time.sleep(3600)


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """Ignore Ctrl-C / SIGTERM while stopping (a second Ctrl-C must not strand processes;
    stopping is bounded in time). Only the main thread can change signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _interrupt_on_termination() -> Iterator[None]:
    """SIGTERM / SIGHUP behave like Ctrl-C: ``finally`` blocks run, children are stopped.

    SIGINT gets Python's default handler back even when it was inherited as ignored (a
    shell's background job): Ctrl-C must always stop ``--serve``.
    """
    previous: dict[int, Any] = {signal.SIGINT: signal.signal(signal.SIGINT, _raise_interrupt)}
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, _raise_interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if not args.no_bootstrap:
        try:
            bootstrap(argv)
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"demo: installing the requirements failed: {exc}", file=sys.stderr)
            return 1
    elif missing_modules():
        print(f"demo: missing {', '.join(missing_modules())} (and --no-bootstrap given)")
        return 2
    try:
        with _interrupt_on_termination():
            report = run(args)
    except KeyboardInterrupt:
        print("\nstopped; every process the demo started has exited", flush=True)
        return 0 if args.serve else 130
    except RuntimeError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    print("done; every process the demo started has exited", flush=True)
    return 0 if report.data_complete else 1


if __name__ == "__main__":
    sys.exit(main())
