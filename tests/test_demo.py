"""The one-command demo end to end: collector + storefront (Flask, gunicorn) + pricing
(FastAPI, uvicorn) + inventory (Django + SQLite, gunicorn), real processes on 127.0.0.1.

The first test runs the demo's orchestration in this process (the collector on a thread, the
apps as subprocesses) and checks the stored traces; the second runs the demo's command line
with ``--serve`` and stops it with SIGINT, as a user's Ctrl-C would.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from example_apps import demo
from sentry_tracing_mw.collector import Store

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(os.name == "nt", reason="gunicorn and process groups: POSIX")


def _alive(pids: set[int]) -> list[str]:
    """The processes of ``pids`` that still exist (zombies count as gone)."""
    left = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid} {' '.join(proc.cmdline())}")
        except psutil.NoSuchProcess:
            pass
    return left


def _wait_gone(pids: set[int], timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := _alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _by_service(units: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {u["service"]: u for u in units}
    assert len(out) == len(units), [u["service"] for u in units]
    return out


def test_demo_orchestration_stores_stitched_traces(tmp_path: Path) -> None:
    out = io.StringIO()
    report = demo.run(demo.parse_args(["--no-bootstrap", "--workdir", str(tmp_path)]), out=out)
    text = out.getvalue()

    # every process the demo started (group leaders and gunicorn workers) is gone
    assert len(report.pids) >= 5, report.pids  # 3 leaders + 2 gunicorn workers at least
    assert _wait_gone(report.pids, timeout=5) == []

    assert [(r.cart_id, r.status) for r in report.results] == list(demo.BURST), text
    assert all(r.trace_id for r in report.results), text  # each page had its meta tag
    assert len({r.trace_id for r in report.results}) == len(report.results)
    assert report.data_complete, text
    assert report.ok_trace and report.failed_trace

    store = Store(str(report.db))
    try:
        # -- a successful checkout: three transactions, one trace, parent links -------------
        units = store.units_of_trace(report.ok_trace)
        assert len(units) == 3
        assert {u["trace_id"] for u in units} == {report.ok_trace}
        by = _by_service(units)
        assert set(by) == {"storefront", "pricing", "inventory"}
        front, pricing, inventory = by["storefront"], by["pricing"], by["inventory"]
        assert front["name"] == "/checkout/<cart_id>" and front["parent_span_id"] is None
        assert pricing["name"] == "/quote" and inventory["name"] == "/reservations/"
        assert [u["status"] for u in units] == ["ok", "ok", "ok"]
        assert front["event"]["release"] == "storefront@1.4.0"
        assert front["event"]["environment"] == "demo"

        spans = store.spans_of_units([u["id"] for u in units])
        assert {s["trace_id"] for s in spans} == {report.ok_trace}
        in_unit: dict[str, list[dict[str, Any]]] = {}
        for span in spans:
            in_unit.setdefault(span["unit_id"], []).append(span)

        client_spans = [s for s in in_unit[front["id"]] if s["op"] == "http.client"]
        assert len(client_spans) == 2
        to_quote = next(s for s in client_spans if s["description"].endswith("/quote"))
        to_reserve = next(s for s in client_spans if s["description"].endswith("/reservations/"))
        assert to_quote["description"].startswith("POST http://127.0.0.1:")
        assert to_quote["parent_span_id"] == front["span_id"]
        assert to_reserve["parent_span_id"] == front["span_id"]
        # each downstream transaction hangs off the storefront's outgoing span
        assert pricing["parent_span_id"] == to_quote["span_id"]
        assert inventory["parent_span_id"] == to_reserve["span_id"]
        # ... and ran inside it
        assert (
            to_quote["start_ts"]
            <= pricing["start_ts"]
            <= pricing["end_ts"]
            <= to_quote["end_ts"] + 0.5
        )  # (pricing ends after its last send: the storefront may have the reply first)

        db_spans = [s for s in in_unit[inventory["id"]] if s["op"] == "db"]
        statements = " | ".join(s["description"] for s in db_spans)
        for verb in ("SELECT", "INSERT INTO", "UPDATE"):
            assert any(s["description"].startswith(verb) for s in db_spans), statements
        assert all(s["data"].get("db.system") == "sqlite" for s in db_spans)
        assert all(s["parent_span_id"] == inventory["span_id"] for s in db_spans)
        assert not [s for s in spans if s["op"] == "db" and s["unit_id"] != inventory["id"]]

        functions = {s["description"] for s in in_unit[pricing["id"]] if s["op"] == "function"}
        assert {"price_lines", "apply_coupon", "tax lookup"} <= functions
        assert store.errors_of_trace(report.ok_trace) == []

        # -- a failing checkout: the errors are linked to the spans that failed ------------
        failed = store.units_of_trace(report.failed_trace)
        fby = _by_service(failed)
        assert set(fby) == {"storefront", "pricing", "inventory"}
        assert fby["pricing"]["status"] == "internal_error"
        assert fby["storefront"]["status"] == "internal_error"
        assert fby["inventory"]["status"] == "ok"
        fspans = store.spans_of_units([fby["storefront"]["id"]])
        fquote = next(
            s for s in fspans if s["op"] == "http.client" and "/quote" in s["description"]
        )
        assert fquote["status"] == "internal_error"
        assert fby["pricing"]["parent_span_id"] == fquote["span_id"]

        errors = store.errors_of_trace(report.failed_trace)
        assert len(errors) == 2, errors
        by_span = {e["span_id"]: e for e in errors}
        crash = by_span[fby["pricing"]["span_id"]]  # pricing's unhandled exception
        assert "CouponExpiredError" in crash["title"]
        assert crash["transaction_name"] == "/quote"
        reported = by_span[fby["storefront"]["span_id"]]  # the storefront's capture_exception
        assert "HTTPStatusError" in reported["title"]
        for err in errors:
            event = store.error(err["event_id"])
            assert event is not None
            trace_ctx = event["event"]["contexts"]["trace"]
            assert trace_ctx["trace_id"] == report.failed_trace
            assert trace_ctx["span_id"] == err["span_id"]

        # -- the unknown-product checkout: handled, two transactions, no error ------------
        ghost = next(r for r in report.results if r.cart_id.startswith("ghost-"))
        assert ghost.trace_id is not None
        gby = _by_service(store.units_of_trace(ghost.trace_id))
        assert set(gby) == {"storefront", "inventory"}
        assert gby["inventory"]["status"] == "not_found"
        assert store.errors_of_trace(ghost.trace_id) == []
    finally:
        store.close()

    # the printed trees are the collector's own rendering, with the errors marked
    assert f"trace {report.ok_trace}" in text and f"trace {report.failed_trace}" in text
    assert "[storefront] transaction /checkout/<cart_id> (http.server)" in text
    assert "[ERROR CouponExpiredError: coupon SPRING2019 has expired]" in text
    assert re.search(r"trace viewer: http://127\.0\.0\.1:\d+/", text)


def test_demo_command_serves_until_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTRY_")}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "example_apps" / "demo.py"), "--serve", "--no-bootstrap"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "press Ctrl-C" in line:
                break
        text = "".join(lines)
        assert "serving; press Ctrl-C to stop" in text, text
        children = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        assert len(children) >= 5, children

        viewer = re.search(r"trace viewer: (http://127\.0\.0\.1:\d+/)", text)
        failing = re.search(r"=== a failing checkout: \S+ \(502\) ===\ntrace ([0-9a-f]{32})", text)
        assert viewer and failing, text
        with urllib.request.urlopen(
            f"{viewer.group(1)}api/ui/trace/{failing.group(1)}", timeout=10
        ) as resp:
            view = json.load(resp)
        assert {u["service"] for u in view["units"]} == {"storefront", "pricing", "inventory"}
        assert not any(u["orphan"] for u in view["units"])
        db = re.search(r"--db (\S+)traces\.sqlite3", text)
        assert db, text
        workdir = Path(db.group(1))
        assert workdir.is_dir()

        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    assert proc.returncode == 0, text + rest
    assert "stopped; every process the demo started has exited" in rest
    assert _wait_gone(children, timeout=5) == []
    assert not workdir.exists()  # the temporary workdir is removed


def test_demo_without_bootstrap_names_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "REQUIRED_MODULES", {"flask": "flask", "no_such_mod_x1": "x"})
    assert demo.missing_modules() == ["no_such_mod_x1"]
    assert demo.main(["--no-bootstrap"]) == 2
    assert "missing no_such_mod_x1" in capsys.readouterr().out
    # after a bootstrap attempt (the re-run's marker is set) it gives up instead of looping
    monkeypatch.setenv(demo.BOOTSTRAP_ENV, "1")
    with pytest.raises(SystemExit, match="still missing after installing: no_such_mod_x1"):
        demo.bootstrap([])
