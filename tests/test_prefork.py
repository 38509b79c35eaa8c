"""gunicorn with pre-fork workers: every worker delivers its own transactions.

The app module calls ``stm.init()`` at import time, as real apps do. With ``--preload`` the
master imports it (and initializes the client) before forking, so each worker inherits a
client whose transport must start afresh after the fork; without it every worker imports
and initializes on its own. Either way each worker's transactions reach Sentry, tagged with
the pid of the worker that served them.
"""

from __future__ import annotations

import os
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from .sentry_server import SentryServer
from .servers import run_gunicorn

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 3

APP_MODULE = textwrap.dedent(
    """
    import os
    import time

    import sentry_tracing_mw as stm
    from sentry_tracing_mw.integrations.wsgi import TracingMiddleware

    stm.init(dsn=os.environ["STM_PREFORK_DSN"], traces_sample_rate=1.0,
             instrument_http_clients=False)
    IMPORTED_IN = os.getpid()


    def _app(environ, start_response):
        pid = str(os.getpid())
        span = stm.get_current_span()
        if span is not None:
            span.set_tag("worker.pid", pid)
            span.set_tag("imported.in", str(IMPORTED_IN))
        with stm.start_span("app.work", "sleep"):
            time.sleep(0.01)  # keep a worker busy so that the others take connections
        body = pid.encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]


    app = TracingMiddleware(_app)
    """
)


@pytest.fixture(
    params=[("sync", True), ("sync", False), ("gevent", True), ("gevent", False)],
    ids=["preload", "no-preload", "gevent-preload", "gevent"],
)
def gunicorn(
    request: pytest.FixtureRequest, sentry_server: SentryServer, tmp_path: Path
) -> Iterator[tuple[str, int, bool]]:
    """gunicorn serving the app module; yields (base URL, master pid, preload).

    gevent workers monkey-patch after the fork: with ``--preload`` the client's locks
    were made before, unpatched, and its worker thread is a greenlet.
    """
    worker_class: str
    preload: bool
    worker_class, preload = request.param
    (tmp_path / "prefork_app.py").write_text(APP_MODULE)
    env = {
        **os.environ,
        "STM_PREFORK_DSN": sentry_server.dsn,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    with run_gunicorn(
        "prefork_app:app",
        cwd=tmp_path,
        env=env,
        log_path=tmp_path / "gunicorn.log",
        ready_path="/ready",
        workers=WORKERS,
        preload=preload,
        worker_class=worker_class,
    ) as (base, master):
        assert sentry_server.wait_for(1, 10)
        sentry_server.clear()
        yield base, master, preload


def test_every_worker_delivers_its_transactions(
    sentry_server: SentryServer, gunicorn: tuple[str, int, bool]
) -> None:
    base, master, preload = gunicorn
    served: Counter[str] = Counter()
    problems: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(n):
            try:
                # a new connection per request: the kernel spreads them over the workers
                resp = requests.get(f"{base}/r/{threading.get_ident()}/{i}", timeout=10)
                with lock:
                    served[resp.text] += 1
            except requests.RequestException as exc:
                with lock:
                    problems.append(repr(exc))

    # Send batches until every worker served some (bounded).
    deadline = time.monotonic() + 30
    while len(served) < WORKERS and time.monotonic() < deadline:
        threads = [threading.Thread(target=client, args=(15,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert problems == []
    assert len(served) == WORKERS, served
    total = sum(served.values())

    assert sentry_server.wait_for(total, timeout=20), (len(sentry_server.accepted()), total)
    time.sleep(0.3)  # nothing more (no duplicates) arrives
    txs = [t for t in sentry_server.transactions() if t["transaction"].startswith("/r/")]
    delivered = Counter(t["tags"]["worker.pid"] for t in txs)
    assert delivered == served  # every worker, every transaction, exactly once
    assert str(master) not in delivered
    imported_in = {t["tags"]["imported.in"] for t in txs}
    if preload:
        assert imported_in == {str(master)}  # one client, initialized before the fork
    else:
        assert imported_in == set(served)  # each worker initialized its own
    assert len({t["event_id"] for t in txs}) == len(txs)
    for tx in txs:
        (span,) = tx["spans"]
        assert span["parent_span_id"] == tx["contexts"]["trace"]["span_id"]


# -- a server that forks in C (uWSGI) -----------------------------------------------------

C_FORK_SCRIPT = textwrap.dedent(
    """
    import ctypes, os, sys, types

    fake = types.ModuleType("uwsgi")  # what uWSGI puts in a worker: importable `uwsgi`
    fake.opt = {"enable-threads": True, "master": True}
    sys.modules["uwsgi"] = fake
    import sentry_tracing_mw as stm

    stm.init(dsn=sys.argv[1], traces_sample_rate=1.0, instrument_http_clients=False)
    with stm.start_transaction("master", op="task"):  # the master's sender thread runs
        pass
    assert stm.flush(5)
    replaced = sys.argv[2] == "replaced"
    if replaced:  # the app sets its own hook after init(): ours is not called
        fake.post_fork_hook = lambda: None
    libc = ctypes.CDLL(None, use_errno=True)
    children = []
    for worker in range(2):
        pid = libc.fork()  # no Python fork hook runs, as under uWSGI
        if pid == 0:
            try:
                getattr(fake, "post_fork_hook", lambda: None)()  # what uWSGI calls
                for i in range(5):
                    with stm.start_transaction(f"w{worker}", op="task") as tx:
                        with tx.start_child("work", str(i)):
                            pass
                stm.capture_exception(ValueError(f"w{worker}"))
                ok = stm.flush(5)
            finally:
                os._exit(0 if ok else 3)
        children.append(pid)
    codes = [os.waitpid(pid, 0)[1] for pid in children]
    print(codes)
    """
)


@pytest.mark.parametrize("hook", ["kept", "replaced"])
def test_workers_forked_in_c_get_their_own_ids_and_sender(
    sentry_server: SentryServer, tmp_path: Path, hook: str
) -> None:
    # uWSGI forks its workers in C: no Python fork hook runs (without
    # --py-call-osafterfork). Its post-fork hook does, unless the app replaced it; then
    # the first unit of work in the worker notices the new pid. Either way each worker
    # draws ids of its own (Sentry keeps one event per event id) and has a sender thread
    # of its own (the master's does not exist there).
    import subprocess
    import sys

    script = tmp_path / "cfork.py"
    script.write_text(C_FORK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(script), sentry_server.dsn, hook],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 0]", out.stderr
    deadline = time.monotonic() + 10
    while len(sentry_server.transactions()) < 11 and time.monotonic() < deadline:
        time.sleep(0.05)
    txs = sentry_server.transactions()
    assert Counter(t["transaction"] for t in txs) == {"master": 1, "w0": 5, "w1": 5}
    events = sentry_server.events()
    assert len(events) == 2
    ids = [t["contexts"]["trace"]["trace_id"] for t in txs]
    assert len(set(ids)) == len(ids)
    span_ids = [s["span_id"] for t in txs for s in t["spans"]]
    span_ids += [t["contexts"]["trace"]["span_id"] for t in txs]
    assert len(set(span_ids)) == len(span_ids)
    event_ids = [e["event_id"] for e in [*txs, *events]]
    assert len(set(event_ids)) == len(event_ids)
