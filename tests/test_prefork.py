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
