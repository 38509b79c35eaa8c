"""The client end to end: transactions and errors reach a real local Sentry."""

from __future__ import annotations

import copy
import gc
import json
import os
import pickle
import platform
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import psutil
import pytest

import sentry_tracing_mw as stm
from sentry_tracing_mw._transport import WORKER_NAME
from tests.sentry_server import SentryServer


def init(server: SentryServer, **kw: Any) -> stm.Client:
    kw.setdefault("instrument_http_clients", False)
    kw.setdefault("traces_sample_rate", 1.0)
    return stm.init(dsn=server.dsn, release="app@1.0.0", **kw)


def test_transaction_envelope_on_the_wire(sentry_server: SentryServer) -> None:
    init(sentry_server)
    with stm.start_transaction("checkout", op="task", source="task") as tx:
        with tx.start_child("db", "SELECT 1"):
            pass
    assert stm.flush(5)
    (received,) = sentry_server.accepted()
    assert received.headers["Content-Type"] == "application/x-sentry-envelope"
    assert received.headers["Content-Encoding"] == "gzip"
    assert received.headers["User-Agent"].startswith("sentry.python.tracemw/")
    auth = received.headers["X-Sentry-Auth"]
    assert "sentry_version=7" in auth and "sentry_key=public" in auth
    assert "sentry_timestamp" not in auth
    envelope = received.envelope
    assert envelope is not None
    header = envelope.headers
    (item,) = envelope.items
    payload = item.json()
    assert header["event_id"] == payload["event_id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", header["sent_at"])
    assert header["trace"]["trace_id"] == tx.trace_id
    assert header["trace"]["public_key"] == "public"
    assert header["trace"]["transaction"] == "checkout"
    assert all(isinstance(v, str) for v in header["trace"].values())
    assert item.headers["type"] == "transaction"
    assert item.headers["length"] == len(item.payload)
    assert payload["spans"][0]["description"] == "SELECT 1"
    assert payload["contexts"]["runtime"]["name"] == platform.python_implementation()


def test_unsampled_transactions_are_counted_not_sent(sentry_server: SentryServer) -> None:
    init(sentry_server, traces_sample_rate=0.0)
    for _ in range(3):
        with stm.start_transaction("nope") as tx:
            with tx.start_child("a"):
                pass
            with tx.start_child("b"):
                pass
    assert stm.flush(5)
    assert sentry_server.transactions() == []
    reports = sentry_server.client_reports()
    assert reports[("sample_rate", "transaction")] == 3
    assert reports[("sample_rate", "span")] == 9  # (2 spans + 1) x 3


def test_before_send_transaction_edits_and_drops(sentry_server: SentryServer) -> None:
    import threading

    threads: list[str] = []

    def hook(event: dict[str, Any]) -> dict[str, Any] | None:
        threads.append(threading.current_thread().name)
        if event["transaction"] == "drop":
            return None
        event["tags"] = {"edited": "yes"}
        return event

    init(sentry_server, before_send_transaction=hook)
    with stm.start_transaction("keep"):
        pass
    with stm.start_transaction("drop"):
        pass
    assert stm.flush(5)
    (event,) = sentry_server.transactions()
    assert event["transaction"] == "keep" and event["tags"] == {"edited": "yes"}
    assert threads and all(t != threading.current_thread().name for t in threads)
    assert sentry_server.client_reports()[("before_send", "transaction")] == 1


def test_spans_a_hook_removes_are_reported(sentry_server: SentryServer) -> None:
    # protocol §15: spans dropped one by one (here by before_send_transaction) are counted.
    def hook(event: dict[str, Any]) -> dict[str, Any]:
        event["spans"] = event["spans"][:1] if event["transaction"] == "trim" else []
        return event

    init(sentry_server, before_send_transaction=hook)
    for name in ("trim", "trim", "empty"):
        with stm.start_transaction(name) as tx:
            for i in range(3):
                with tx.start_child("child", str(i)):
                    pass
    assert stm.flush(5)
    assert [len(e["spans"]) for e in sentry_server.transactions()] == [1, 1, 0]
    reports = sentry_server.client_reports()
    assert reports[("before_send", "span")] == 2 + 2 + 3
    assert ("before_send", "transaction") not in reports


def test_sentry_sdk_style_hooks_get_an_empty_hint(sentry_server: SentryServer) -> None:
    seen: list[Any] = []

    def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
        seen.append(hint)
        return None  # filters: nothing may go out

    def before_send_transaction(event: dict[str, Any], hint: Any) -> dict[str, Any] | None:
        seen.append(hint)
        return None if event["transaction"] == "secret" else event

    init(sentry_server, before_send=before_send, before_send_transaction=before_send_transaction)
    stm.capture_exception(RuntimeError("filtered"))
    with stm.start_transaction("secret"):
        pass
    with stm.start_transaction("public"):
        pass
    assert stm.flush(5)
    assert seen == [{}, {}, {}]
    assert sentry_server.events() == []
    assert [e["transaction"] for e in sentry_server.transactions()] == ["public"]
    with pytest.raises(stm.ConfigurationError, match="before_send"):
        stm.init(dsn=sentry_server.dsn, before_send=lambda a, b, c: None)


def test_a_raising_hook_drops_the_event(sentry_server: SentryServer) -> None:
    # A filter that fails must not let the unfiltered event out (sentry-sdk drops it too).
    def broken(event: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("bug in the hook")

    init(sentry_server, before_send=broken, before_send_transaction=broken)
    stm.capture_exception(RuntimeError("private"))
    with stm.start_transaction("private") as tx:
        with tx.start_child("child"):
            pass
    assert stm.flush(5)
    assert sentry_server.events() == [] and sentry_server.transactions() == []
    reports = sentry_server.client_reports()
    assert reports[("before_send", "error")] == 1
    assert reports[("before_send", "transaction")] == 1
    assert reports[("before_send", "span")] == 2


def test_deep_data_from_hooks_is_capped_so_sentry_accepts_it(sentry_server: SentryServer) -> None:
    # Sentry refuses a payload nested deeper than ~128 levels; json.dumps nests 300 levels
    # without a RecursionError (5000 on Python 3.13). The fixture runs relay's normalizer.
    def deep() -> Any:
        value: Any = "leaf"
        for _ in range(300):
            value = {"k": value}
        return value

    def add_deep(event: dict[str, Any]) -> dict[str, Any]:
        event["extra"] = {"deep": deep()}
        return event

    init(sentry_server, before_send=add_deep, before_send_transaction=add_deep)
    with stm.start_transaction("deep"):
        stm.capture_exception(ValueError("x"))
    assert stm.flush(5)
    for received in (*sentry_server.transactions(), *sentry_server.events()):
        assert "[MaxDepth]" in str(received["extra"])
    assert len(sentry_server.transactions()) == 1 and len(sentry_server.events()) == 1


def test_spans_a_hook_turns_into_non_objects_are_dropped_and_counted(
    sentry_server: SentryServer,
) -> None:
    def hook(event: dict[str, Any]) -> dict[str, Any]:
        event["spans"][0] = "not a span"  # Sentry would refuse the whole transaction
        return event

    init(sentry_server, before_send_transaction=hook)
    with stm.start_transaction("t") as tx:
        for _ in range(3):
            with tx.start_child("db"):
                pass
    assert stm.flush(5)
    (sent,) = sentry_server.transactions()
    assert len(sent["spans"]) == 2
    assert sentry_server.client_reports()[("before_send", "span")] == 1


def test_ignore_transactions_and_status_codes(sentry_server: SentryServer) -> None:
    init(
        sentry_server,
        # an exact name, or a regex matching the whole name: "/" never drops "/api/users/"
        ignore_transactions=["/health", re.compile(r"/static/.*"), "/", "GET /", ""],
        trace_ignore_status_codes={404},
    )
    names = ("/health", "/static/app.js", "/kept", "/healthz", "/api/users/", "POST /items/")
    for name in (*names, "/"):
        with stm.start_transaction(name):
            pass
    with stm.start_transaction("/missing") as tx:
        tx.set_http_status(404)
    assert stm.flush(5)
    sent = sorted(e["transaction"] for e in sentry_server.transactions())
    assert sent == ["/api/users/", "/healthz", "/kept", "POST /items/"]
    assert sentry_server.client_reports()[("event_processor", "transaction")] == 4


def test_ignore_transactions_compiled_patterns_are_searched(sentry_server: SentryServer) -> None:
    # A compiled pattern is anchored as written (as trace_propagation_targets are searched);
    # a string still has to match the whole name.
    init(sentry_server, ignore_transactions=[re.compile("^rx"), re.compile(r"\.js$"), "health"])
    for name in ("rx-1", "/app/main.js", "/api/health", "health", "/rx", "main.jsx"):
        with stm.start_transaction(name):
            pass
    assert stm.flush(5)
    sent = sorted(e["transaction"] for e in sentry_server.transactions())
    assert sent == ["/api/health", "/rx", "main.jsx"]


def test_capture_exception_links_to_the_current_span(sentry_server: SentryServer) -> None:
    init(sentry_server)

    def fail() -> None:
        try:
            raise KeyError("inner")
        except KeyError as exc:
            raise ValueError("boom") from exc

    with stm.start_transaction("/users/{id}", source="route") as tx:
        with tx.start_child("db.query", "SELECT") as span:
            secret = "hunter" + str(2)  # noqa: F841  (a local that must not be sent)
            try:
                fail()
            except ValueError:
                event_id = stm.capture_exception()
    assert event_id is not None
    assert stm.flush(5)
    (event,) = sentry_server.events()
    assert event["event_id"] == event_id
    trace = event["contexts"]["trace"]
    assert trace["trace_id"] == tx.trace_id
    assert trace["span_id"] == span.span_id
    assert trace["parent_span_id"] == tx.span_id
    assert trace["op"] == "db.query"
    assert event["transaction"] == "/users/{id}"
    assert event["transaction_info"] == {"source": "route"}
    values = event["exception"]["values"]
    assert [v["type"] for v in values] == ["KeyError", "ValueError"]
    assert values[-1]["mechanism"] == {"type": "generic", "handled": True}
    frames = values[-1]["stacktrace"]["frames"]
    assert frames[-1]["function"] == "fail"
    assert frames[-1]["module"] == __name__ and frames[-1]["in_app"] is True
    assert all("vars" not in f for v in values for f in v["stacktrace"]["frames"])
    assert "hunter2" not in str(event)
    # The error envelope carries the same DSC as the transaction.
    envelopes = sentry_server.envelopes()
    by_type = {env.items[0].headers["type"]: env for env in envelopes}
    assert by_type["event"].headers["trace"] == by_type["transaction"].headers["trace"]


def _raise_with_context() -> None:
    first = 1
    second = 2
    third = 3
    fourth = 4
    fifth = 5
    raise KeyError(first + second + third + fourth + fifth)  # the raising line
    sixth = 6  # noqa: F841  (after it)


class _MessageError(Exception):
    message = "human readable message"


def test_error_event_fields_as_sentry_sdk_sends_them(sentry_server: SentryServer) -> None:
    init(sentry_server)
    try:
        try:
            _raise_with_context()
        except KeyError as exc:
            raise ValueError("base") from exc
    except ValueError as exc:
        exc.__notes__ = ["note one"]  # what add_note() makes (Python 3.11+)
        stm.capture_exception(exc)
    try:
        raise _MessageError(17)
    except _MessageError as exc:
        stm.capture_exception(exc)
    assert stm.flush(5)
    chained, by_message = sentry_server.events()
    inner, outer = chained["exception"]["values"]
    # 5 source lines around the raising line, and a filename relative to the package root
    frame = inner["stacktrace"]["frames"][-1]
    assert frame["context_line"].strip().endswith("# the raising line")
    assert [line.strip() for line in frame["pre_context"]] == [
        "first = 1",
        "second = 2",
        "third = 3",
        "fourth = 4",
        "fifth = 5",
    ]
    assert frame["post_context"][0].strip().startswith("sixth = 6")
    assert len(frame["post_context"]) == 5
    assert frame["filename"] == "tests/test_client_delivery.py"
    assert frame["abs_path"] == __file__
    # builtins carry no module; every exception of the chain has the mechanism
    assert "module" not in inner and "module" not in outer
    assert inner["mechanism"] == outer["mechanism"] == {"type": "generic", "handled": True}
    assert outer["value"] == "base\nnote one"
    (value,) = by_message["exception"]["values"]
    assert value["value"] == "human readable message"
    runtime = chained["contexts"]["runtime"]
    assert runtime["name"] == platform.python_implementation()
    assert runtime["version"] == platform.python_version()
    assert value["module"] == __name__


class _Falsy:
    def __bool__(self) -> bool:
        raise ValueError("the truth value of an array is ambiguous")


class _ArrayDetail(Exception):
    detail = _Falsy()


class _RaisingLoader:
    def get_source(self, name: str) -> bytes:
        return b"not text"  # linecache fails on it


def test_odd_exceptions_and_frames_still_give_an_event(sentry_server: SentryServer) -> None:
    init(sentry_server)
    try:
        raise _ArrayDetail("shown instead")
    except _ArrayDetail as exc:
        exc.__notes__ = ["n" * 5000] * 1000  # 5 MB of notes: only 8 KiB are joined
        stm.capture_exception(exc)
    code = compile("raise ValueError('from odd code')", "/nonexistent/odd.py", "exec")
    try:
        exec(code, {"__name__": "odd", "__loader__": _RaisingLoader()})
    except ValueError as exc:
        stm.capture_exception(exc)
    assert stm.flush(5)
    detail, odd = sentry_server.events()
    value = detail["exception"]["values"][-1]["value"]
    assert value.startswith("shown instead\nnnn") and len(value) <= 8192
    frame = odd["exception"]["values"][-1]["stacktrace"]["frames"][-1]
    assert frame["module"] == "odd" and "context_line" not in frame


def test_source_context_can_be_turned_off(sentry_server: SentryServer) -> None:
    init(sentry_server, include_source_context=False)
    try:
        _raise_with_context()
    except KeyError as exc:
        stm.capture_exception(exc)
    assert stm.flush(5)
    (event,) = sentry_server.events()
    for frame in event["exception"]["values"][-1]["stacktrace"]["frames"]:
        assert not {"pre_context", "context_line", "post_context"} & set(frame)


def test_a_hook_editing_shared_parts_of_its_event_edits_only_that_event(
    sentry_server: SentryServer,
) -> None:
    def scrub(event: dict[str, Any]) -> dict[str, Any]:
        event["sdk"]["name"] = "edited"
        event["sdk"]["packages"][0]["name"] = "edited"
        event["contexts"]["runtime"]["name"] = "edited"
        return event

    init(sentry_server, before_send_transaction=scrub)
    with stm.start_transaction("first"):
        pass
    assert stm.flush(5)  # the hook ran (on the worker) before the error below is built
    stm.capture_exception(ValueError("x"))
    assert stm.flush(5)
    (event,) = sentry_server.events()
    assert event["sdk"]["name"] == "sentry.python.tracemw"
    assert event["sdk"]["packages"][0]["name"] == "pypi:sentry-tracing-mw"
    assert event["contexts"]["runtime"]["name"] == platform.python_implementation()


def test_capturing_a_deep_recursion_with_large_locals_is_quick(
    sentry_server: SentryServer,
) -> None:
    # Only the 100 frames sent are built; a local's repr is bounded before it is built.
    init(sentry_server, send_default_pii=True)
    big = {i: str(i) * 3 for i in range(200_000)}

    def recurse(n: int, data: dict[int, str]) -> int:
        return recurse(n + 1, data)

    try:
        recurse(0, big)
    except RecursionError as exc:
        started = time.perf_counter()
        stm.capture_exception(exc)
        elapsed = time.perf_counter() - started
    assert elapsed < 2.0, elapsed  # was over 30 s
    assert stm.flush(5)
    (event,) = sentry_server.events()
    frames = event["exception"]["values"][-1]["stacktrace"]["frames"]
    assert len(frames) == 100
    shown = frames[-1]["vars"]["data"]
    assert shown.startswith("{0: '000', 1: '111'") and shown.endswith(", ...}")


def test_locals_only_with_send_default_pii(sentry_server: SentryServer) -> None:
    init(sentry_server, send_default_pii=True)
    try:
        user_name = "visible-with-pii"  # noqa: F841
        raise RuntimeError("x")
    except RuntimeError as exc:
        stm.capture_exception(exc)
    assert stm.flush(5)
    (event,) = sentry_server.events()
    frame = event["exception"]["values"][-1]["stacktrace"]["frames"][-1]
    assert "visible-with-pii" in frame["vars"]["user_name"]


def test_locals_named_like_secrets_are_filtered_even_with_pii(
    sentry_server: SentryServer,
) -> None:
    """sentry-sdk's default scrubber sends ``[Filtered]`` for them with PII on, too."""
    init(sentry_server, send_default_pii=True)

    def login() -> None:
        password = "hunter2"  # noqa: F841
        secret = "s3cr3t"  # noqa: F841
        token = "tok_live_123"  # noqa: F841
        api_key = "AKIA123"  # noqa: F841
        user = "bob"  # noqa: F841
        raise ValueError("login failed")

    try:
        login()
    except ValueError as exc:
        stm.capture_exception(exc)
    assert stm.flush(5)
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["stacktrace"]["frames"][-1]["vars"] == {
        "password": "[Filtered]",
        "secret": "[Filtered]",
        "token": "[Filtered]",
        "api_key": "[Filtered]",
        "user": "'bob'",
    }
    shown = json.dumps(
        [f.get("vars") for f in event["exception"]["values"][-1]["stacktrace"]["frames"]]
    )
    for value in ("hunter2", "s3cr3t", "tok_live_123", "AKIA123"):
        assert value not in shown


def test_error_without_a_span_still_carries_a_trace(sentry_server: SentryServer) -> None:
    init(sentry_server)
    stm.capture_exception(RuntimeError("no span"))
    assert stm.flush(5)
    (event,) = sentry_server.events()
    trace = event["contexts"]["trace"]
    assert re.fullmatch(r"[0-9a-f]{32}", trace["trace_id"])
    assert re.fullmatch(r"[0-9a-f]{16}", trace["span_id"])
    (envelope,) = sentry_server.envelopes()
    assert envelope.headers["trace"]["trace_id"] == trace["trace_id"]


def test_same_exception_is_captured_once(sentry_server: SentryServer) -> None:
    init(sentry_server)
    exc = RuntimeError("once")
    assert stm.capture_exception(exc) is not None
    assert stm.capture_exception(exc) is None
    assert stm.flush(5)
    assert len(sentry_server.events()) == 1


def test_before_send_runs_on_the_worker_thread_with_the_event_only(
    sentry_server: SentryServer,
) -> None:
    returned = threading.Event()
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any], bool]] = []

    def hook(*args: Any, **kwargs: Any) -> dict[str, Any] | None:
        # Had capture_exception() run the hook itself, this would wait out its 5 s in vain.
        after_return = returned.wait(5)
        calls.append((threading.current_thread().name, args, kwargs, after_return))
        event = args[0]
        if event["exception"]["values"][-1]["value"] == "drop":
            return None
        event["tags"] = {"edited": "yes"}
        return event

    init(sentry_server, before_send=hook)
    kept = stm.capture_exception(RuntimeError("keep"))
    stm.capture_exception(RuntimeError("drop"))
    returned.set()
    assert stm.flush(5)
    assert len(calls) == 2
    for thread, args, kwargs, after_return in calls:
        assert thread == WORKER_NAME != threading.current_thread().name
        assert after_return  # ran after capture_exception() had returned
        assert kwargs == {} and len(args) == 1 and isinstance(args[0], dict)  # no hint
    assert calls[0][1][0]["event_id"] == kept
    (event,) = sentry_server.events()
    assert event["event_id"] == kept and event["tags"] == {"edited": "yes"}
    assert sentry_server.client_reports() == {("before_send", "error"): 1}


def test_before_send_drops_errors(sentry_server: SentryServer) -> None:
    init(sentry_server, before_send=lambda event: None)
    stm.capture_exception(RuntimeError("dropped"))
    assert stm.flush(5)
    assert sentry_server.events() == []
    assert sentry_server.client_reports()[("before_send", "error")] == 1


def test_error_sample_rate_never_applies_to_transactions(sentry_server: SentryServer) -> None:
    init(sentry_server, sample_rate=0.0)
    with stm.start_transaction("kept"):
        stm.capture_exception(RuntimeError("sampled out"))
    assert stm.flush(5)
    assert len(sentry_server.transactions()) == 1 and sentry_server.events() == []
    assert sentry_server.client_reports()[("sample_rate", "error")] == 1


def test_errors_in_unsampled_traces_are_still_sent(sentry_server: SentryServer) -> None:
    init(sentry_server, traces_sample_rate=0.0)
    with stm.start_transaction("unsampled") as tx:
        stm.capture_exception(RuntimeError("still sent"))
    assert stm.flush(5)
    (event,) = sentry_server.events()
    assert event["contexts"]["trace"]["trace_id"] == tx.trace_id
    assert "sampled" not in event["contexts"]["trace"]


def test_atexit_flushes_queued_transactions(sentry_server: SentryServer) -> None:
    script = textwrap.dedent(
        f"""
        import sentry_tracing_mw as stm
        stm.init(dsn={sentry_server.dsn!r}, traces_sample_rate=1.0, shutdown_timeout=10.0,
                 instrument_http_clients=False)  # (a loaded machine may need over 2 s)
        for i in range(5):
            with stm.start_transaction(f"exit-{{i}}"):
                pass
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    assert sentry_server.wait_for(1, timeout=5)
    names = sorted(e["transaction"] for e in sentry_server.transactions())
    assert names == [f"exit-{i}" for i in range(5)]


def test_init_again_hands_the_old_clients_drops_to_the_new_one(
    sentry_server: SentryServer,
) -> None:
    # The old client cannot send what waits in its queue (Sentry hangs): close() drops it,
    # and the replacing client reports those drops (and the old one's) instead of losing them.
    sentry_server.hang()
    init(sentry_server, shutdown_timeout=0.3)
    with stm.start_transaction("in-flight"):
        pass
    assert sentry_server.wait_hanging()
    old = stm.get_client()
    for i in range(3):
        with stm.start_transaction(f"queued-{i}"):
            with stm.start_span("db", "q"):
                pass
    unsampled = old.start_transaction("unsampled", sampled=False)
    init(sentry_server)  # closes the old client: the 3 queued transactions are dropped
    unsampled.finish()  # finished after the old client closed: the new one counts it
    sentry_server.release()
    assert stm.flush(10)
    reports = sentry_server.client_reports()
    assert reports[("queue_overflow", "transaction")] == 3
    assert reports[("queue_overflow", "span")] == 6
    assert reports[("sample_rate", "transaction")] == 1
    assert sentry_server.wait_for(1)
    assert [e["transaction"] for e in sentry_server.transactions()] == ["in-flight"]


def test_flush_says_false_when_close_dropped_what_it_waited_for(
    sentry_server: SentryServer,
) -> None:
    sentry_server.hang()
    init(sentry_server)
    client = stm.get_client()
    for _ in range(5):
        with stm.start_transaction("t"):
            pass
    assert sentry_server.wait_hanging()
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(client.flush(20)))
    waiter.start()
    time.sleep(0.2)
    client.close(0.3)  # drops the 4 still queued
    waiter.join(10)
    sentry_server.release()
    assert result == [False]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_multiprocessing_fork_children_send_what_they_traced(sentry_server: SentryServer) -> None:
    # multiprocessing children end with os._exit: atexit never runs there.
    script = textwrap.dedent(
        f"""
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        import sentry_tracing_mw as stm

        def work(i):
            with stm.start_transaction(f"child-{{i}}"):
                pass
            return i

        if __name__ == "__main__":
            stm.init(dsn={sentry_server.dsn!r}, traces_sample_rate=1.0, shutdown_timeout=10.0,
                     instrument_http_clients=False)
            with stm.start_transaction("parent"):
                pass
            stm.flush(5)  # the parent's sender thread exists when it forks
            ctx = mp.get_context("fork")
            procs = [ctx.Process(target=work, args=(i,)) for i in range(3)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(20)
            with ProcessPoolExecutor(2, mp_context=ctx) as pool:
                assert sorted(pool.map(work, range(100, 120))) == list(range(100, 120))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    names = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(names) < 24:
        names = {e["transaction"] for e in sentry_server.transactions()}
        time.sleep(0.05)
    expected = {"parent"} | {f"child-{i}" for i in (0, 1, 2, *range(100, 120))}
    assert names == expected, expected - names


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("imported", ["parent", "child"])
def test_a_multiprocessing_child_that_calls_init_itself_sends_at_exit(
    sentry_server: SentryServer, imported: str
) -> None:
    # The child (fork start method, as granian's workers) calls init() itself: no client
    # existed at the fork, or the package was imported in the child only. It ends with
    # os._exit, so its queue must be sent by multiprocessing's exit hook.
    script = textwrap.dedent(
        f"""
        import multiprocessing as mp, sys
        if sys.argv[1] == "parent":
            import sentry_tracing_mw

        def work():
            import sentry_tracing_mw as stm
            stm.init(dsn={sentry_server.dsn!r}, traces_sample_rate=1.0,
                     instrument_http_clients=False)
            for i in range(5):
                with stm.start_transaction(f"child-{{i}}"):
                    pass

        if __name__ == "__main__":
            p = mp.get_context("fork").Process(target=work)
            p.start()
            p.join(20)
            sys.exit(p.exitcode)
        """
    )
    subprocess.run([sys.executable, "-c", script, imported], check=True, timeout=60)
    names: set[str] = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(names) < 5:
        names = {e["transaction"] for e in sentry_server.transactions()}
        time.sleep(0.05)
    assert names == {f"child-{i}" for i in range(5)}


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")
def test_flush_from_a_signal_handler_never_hangs(sentry_server: SentryServer) -> None:
    # The handler runs on the main thread, which may hold the transport's or the client
    # reports' lock at that moment: flush() must return within its timeout regardless.
    # (Before the fix most runs of 4 s hung for good.) A live Sentry and a dead one (whose
    # drops are counted under the reports' lock) run side by side.
    script = textwrap.dedent(
        """
        import faulthandler, signal, sys, time
        import sentry_tracing_mw as stm
        faulthandler.dump_traceback_later(25, exit=True)
        stm.init(dsn=sys.argv[1], traces_sample_rate=1.0, instrument_http_clients=False)
        calls = [0]
        busy = [False]
        def handler(signum, frame):
            if busy[0]:  # a signal during the handler's own flush: no nesting
                return
            busy[0] = True
            calls[0] += 1
            stm.flush(0.005)
            if calls[0] % 50 == 0:
                stm.capture_exception(ValueError("from a handler"))
            busy[0] = False
        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.001, 0.003)
        end = time.monotonic() + 4
        while time.monotonic() < end:
            with stm.start_transaction("t"):
                pass
        signal.setitimer(signal.ITIMER_REAL, 0)
        assert calls[0] > 100, calls
        stm.flush(5)
        """
    )
    started = time.monotonic()
    procs = [
        subprocess.Popen([sys.executable, "-c", script, dsn])
        for dsn in (sentry_server.dsn, "http://public@127.0.0.1:9/1")
    ]
    codes = [p.wait(timeout=60) for p in procs]
    assert codes == [0, 0]
    assert time.monotonic() - started < 40
    assert sentry_server.transactions()


def test_hung_sentry_never_delays_process_exit_beyond_shutdown_timeout(
    sentry_server: SentryServer,
) -> None:
    sentry_server.hang()
    script = textwrap.dedent(
        f"""
        import sentry_tracing_mw as stm
        stm.init(dsn={sentry_server.dsn!r}, traces_sample_rate=1.0, shutdown_timeout=1.0,
                 instrument_http_clients=False)
        for i in range(50):
            with stm.start_transaction("hang"):
                pass
        """
    )
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    elapsed = time.monotonic() - started
    assert sentry_server.wait_hanging(5)  # the child's worker was held by Sentry
    sentry_server.release()
    # shutdown_timeout plus interpreter start-up slack; waiting for the hung POST would
    # take the 10 s read timeout or forever
    assert elapsed < 1.0 + 6.0
    # The held envelope is recorded once released; the fixture then validates it.
    assert sentry_server.wait_requests(1)


@pytest.mark.parametrize("pii", [False, True])
def test_span_data_with_sensitive_keys_is_scrubbed(sentry_server: SentryServer, pii: bool) -> None:
    init(sentry_server, send_default_pii=pii)
    with stm.start_transaction("scrub") as tx:
        with tx.start_child("auth") as span:
            span.set_data("password", "hunter2")
            span.set_data("api_key", "k-123")
            span.set_data("rows", 3)
    assert stm.flush(5)
    data = sentry_server.transactions()[0]["spans"][0]["data"]
    assert data == {"password": "[Filtered]", "api_key": "[Filtered]", "rows": 3}


FLOOD = 100_000


@pytest.mark.parametrize("outage", ["down", "hang"])
def test_flood_through_the_public_api_is_exactly_accounted(
    sentry_server: SentryServer, outage: str
) -> None:
    """100,000 transactions (one child span each) through ``init()`` with the transport's
    defaults while Sentry is down (backoff drops them on submit) or hanging (the queue
    fills and overflows). Counted from what Sentry receives once it is back, not from
    submit(): every transaction was delivered or reported dropped, exactly once."""
    sentry_server.fault(outage)
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    proc = psutil.Process()
    gc.collect()
    rss_before = proc.memory_info().rss
    started = time.monotonic()
    produced = 0
    for _ in range(FLOOD):
        with stm.start_transaction("flood", op="task") as tx:
            with tx.start_child("db.query", "SELECT 1"):
                pass
        produced += 1
    rss_growth = proc.memory_info().rss - rss_before
    sentry_server.heal(outage)

    deadline = time.monotonic() + 15
    while True:
        assert stm.flush(5)
        sent = len(sentry_server.transactions())
        reports = sentry_server.client_reports()
        dropped = {r: n for (r, category), n in reports.items() if category == "transaction"}
        if sent + sum(dropped.values()) >= produced or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert produced == FLOOD
    assert sent + sum(dropped.values()) == produced, (sent, dropped)
    # each dropped transaction is also reported as its 2 spans (root + child)
    spans = {r: n for (r, category), n in reports.items() if category == "span"}
    assert spans == {r: 2 * n for r, n in dropped.items()}, (spans, dropped)
    assert set(dropped) <= {"network_error", "queue_overflow"}, dropped
    assert dropped.get("network_error" if outage == "down" else "queue_overflow", 0) > 0
    event_ids = [t["event_id"] for t in sentry_server.transactions()]
    assert len(set(event_ids)) == len(event_ids)  # nothing delivered twice
    assert rss_growth < 50 * 1024 * 1024, f"RSS grew by {rss_growth / 2**20:.1f} MiB"
    assert time.monotonic() - started < 20


def test_close_that_times_out_says_what_it_drops(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing is lost silently: a close() that reaches its timeout behind a slow Sentry
    logs how many transactions and spans were still queued (no report can carry them)."""
    import logging
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[int] = []
    release = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            release.wait(5)
            received.append(1)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        stm.init(
            dsn=f"http://public@127.0.0.1:{server.server_address[1]}/1",
            traces_sample_rate=1.0,
            instrument_http_clients=False,
            send_client_reports=False,
        )
        n = 12
        for i in range(n):
            with stm.start_transaction(f"job{i}", op="task") as tx:
                tx.start_child("db", "q").finish()
        with caplog.at_level(logging.WARNING, "sentry_tracing_mw"):
            started = time.monotonic()
            stm.close(timeout=0.5)
            assert time.monotonic() - started < 3
        release.set()
        (record,) = [r for r in caplog.records if "still queued" in r.getMessage()]
        match = re.search(r"(\d+) transaction\(s\) \((\d+) span\(s\)\)", record.getMessage())
        assert match is not None
        dropped, spans = int(match[1]), int(match[2])
        assert dropped in (n - 1, n)  # the one being sent when close() gave up is not queued
        assert spans == 2 * dropped
        time.sleep(0.3)
        assert len(received) <= n - dropped
    finally:
        release.set()
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup is new in 3.11")
def test_exception_group_members_are_sent_as_a_tree(sentry_server: SentryServer) -> None:
    # A TaskGroup (or except*) failure raises an ExceptionGroup: its members, with their
    # own causes, are what the user needs to see. Sent as sentry-sdk sends them: every
    # exception with mechanism exception_id / parent_id / source, the group's flagged.
    stm.init(dsn=sentry_server.dsn)

    def fail(exc: BaseException) -> BaseException:
        try:
            raise exc
        except BaseException as raised:
            return raised

    def with_cause() -> BaseException:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            try:
                raise ValueError("outer") from inner
            except ValueError as outer:
                return outer

    group = fail(ExceptionGroup("two failed", [with_cause(), fail(TypeError("t"))]))  # noqa: F821
    assert stm.capture_exception(group)
    assert stm.flush(5) and sentry_server.wait_for(1)
    (event,) = sentry_server.events()
    values = event["exception"]["values"]
    got = [
        (
            v["type"],
            v["value"],
            v["mechanism"]["exception_id"],
            v["mechanism"].get("parent_id"),
            v["mechanism"].get("source"),
            v["mechanism"].get("is_exception_group", False),
        )
        for v in values
    ]
    assert got == [
        ("TypeError", "t", 3, 0, "exceptions[1]", False),
        ("KeyError", "'inner'", 2, 1, "__cause__", False),
        ("ValueError", "outer", 1, 0, "exceptions[0]", False),
        ("ExceptionGroup", "two failed", 0, None, None, True),
    ]
    assert [v["mechanism"]["type"] for v in values] == ["chained"] * 3 + ["generic"]
    assert all(v["stacktrace"]["frames"] for v in values)  # each raised: its own frames


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup is new in 3.11")
def test_a_large_exception_group_still_fits_one_event(sentry_server: SentryServer) -> None:
    # 60 tasks each failing 100 frames deep: the members share a frame budget, so the
    # event stays far below Sentry's 1 MiB item limit instead of being dropped.
    stm.init(dsn=sentry_server.dsn)

    def deep(n: int) -> None:
        if n:
            deep(n - 1)
        raise ValueError("bottom")

    members = []
    for _ in range(60):
        try:
            deep(100)
        except ValueError as exc:
            members.append(exc)
    try:
        raise ExceptionGroup("many", members)  # noqa: F821
    except Exception as group:
        assert stm.capture_exception(group)
    assert stm.flush(5) and sentry_server.wait_for(1)
    (event,) = sentry_server.events()
    values = event["exception"]["values"]
    assert len(values) == 50 and values[-1]["type"] == "ExceptionGroup"
    frames = sum(len(v.get("stacktrace", {}).get("frames", ())) for v in values)
    assert frames <= 300
    (envelope,) = sentry_server.accepted()
    assert len(envelope.body) < 1024 * 1024


def test_a_copied_captured_exception_is_reported_in_another_trace(
    sentry_server: SentryServer,
) -> None:
    """The captured mark travels with a pickled or copied exception (a process pool's
    result): it only skips captures in the trace that captured it."""
    init(sentry_server)
    exc = RuntimeError("from a worker")
    assert stm.capture_exception(exc) is not None
    copied = pickle.loads(pickle.dumps(exc))
    assert stm.capture_exception(copied) is None  # the same trace: the same error
    with stm.start_transaction(name="parent"):
        assert stm.capture_exception(copied) is not None
        assert stm.capture_exception(copy.copy(copied)) is None  # this trace has it now
    assert stm.flush(5) and sentry_server.wait_for(2)
    assert [e["exception"]["values"][-1]["value"] for e in sentry_server.events()] == [
        "from a worker"
    ] * 2


def test_locals_that_only_contain_a_secret_word_are_sent_with_pii(
    sentry_server: SentryServer,
) -> None:
    """Filtering goes by name, as sentry-sdk's denylist (plus names ending in a secret
    word: ``db_password``, ``access_token``, ``stripe_api_key``): ``author``,
    ``max_tokens``, ``token_type`` or ``session_count`` are ordinary variables, sent with
    PII on."""
    init(sentry_server, send_default_pii=True)

    def work() -> None:
        author = "ann"  # noqa: F841
        max_tokens = 512  # noqa: F841
        session_count = 3  # noqa: F841
        token_type = "bearer"  # noqa: F841
        secret_santa = "bob"  # noqa: F841
        db_password = "pw1"  # noqa: F841
        access_token = "tk1"  # noqa: F841
        stripe_api_key = "sk1"  # noqa: F841
        authToken = "tk2"  # noqa: F841
        password_hash = "$2b$12$x"  # noqa: F841
        pwd = "pw2"  # noqa: F841
        DBPassword = "pw3"  # noqa: F841
        client_secret_2 = "cs2"  # noqa: F841
        raise ValueError("failed")

    try:
        work()
    except ValueError as exc:
        stm.capture_exception(exc)
    assert stm.flush(5)
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["stacktrace"]["frames"][-1]["vars"] == {
        "author": "'ann'",
        "max_tokens": "512",
        "session_count": "3",
        "token_type": "'bearer'",
        "secret_santa": "'bob'",
        "db_password": "[Filtered]",
        "access_token": "[Filtered]",
        "stripe_api_key": "[Filtered]",
        "authToken": "[Filtered]",
        "password_hash": "[Filtered]",
        "pwd": "[Filtered]",
        "DBPassword": "[Filtered]",
        "client_secret_2": "[Filtered]",
    }


def test_an_exception_captured_in_a_transaction_is_not_sent_again_around_it(
    sentry_server: SentryServer,
) -> None:
    """A job captures its error inside its transaction and re-raises; the handler around
    the ``with`` block captures it again: one event (as sentry-sdk's dedupe), while the
    same object in an unrelated later transaction is reported again."""
    init(sentry_server)
    exc = RuntimeError("job failed")
    for _ in range(2):
        try:
            with stm.start_transaction(name="job"):
                try:
                    raise exc
                except RuntimeError as inner:
                    assert stm.capture_exception(inner) is not None
                    raise
        except RuntimeError as outer:
            assert stm.capture_exception(outer) is None
        with stm.start_transaction(name="other"):  # another unit of work: reported
            assert stm.capture_exception(exc) is not None
    assert stm.flush(5) and sentry_server.wait_for(4)
    assert len(sentry_server.events()) == 4


def _wrapped_chain(n: int, message: str = "wrapper layer", depth: int = 0) -> BaseException:
    """A chain of ``n`` exceptions: a ValueError wrapped ``n - 1`` times (raise ... from),
    each wrapper raised ``depth`` calls deep."""

    def wrap(text: str, cause: BaseException, depth: int) -> None:
        if depth:
            wrap(text, cause, depth - 1)
        raise RuntimeError(text) from cause

    try:
        int("12a")
    except ValueError as exc:
        current: BaseException = exc
    for i in range(1, n):
        try:
            wrap(f"{message} {i}", current, depth)
        except RuntimeError as exc:
            current = exc
    return current


def test_a_chain_longer_than_ten_keeps_its_root_cause_in_sentry_sdks_order(
    sentry_server: SentryServer,
) -> None:
    """The exception where the bug is (the root cause) comes first, as sentry-sdk sends
    the chain; the first 10 wrappers used to be all that was sent."""
    sdk_utils = pytest.importorskip("sentry_sdk.utils")
    init(sentry_server)
    exc = _wrapped_chain(12)
    stm.capture_exception(exc)
    assert stm.flush(5)
    (event,) = sentry_server.events()
    ours = [(v["type"], v["value"]) for v in event["exception"]["values"]]
    sdk = sdk_utils.exceptions_from_error_tuple((type(exc), exc, exc.__traceback__))
    assert ours == [(v["type"], v["value"]) for v in sdk]
    assert ours[0] == ("ValueError", "invalid literal for int() with base 10: '12a'")
    assert len(ours) == 12


def test_a_very_long_chain_keeps_the_root_cause_and_the_outermost(
    sentry_server: SentryServer,
) -> None:
    init(sentry_server)
    stm.capture_exception(_wrapped_chain(250))
    assert stm.flush(5)
    (event,) = sentry_server.events()
    values = event["exception"]["values"]
    assert len(values) == 100
    assert values[0]["type"] == "ValueError"  # the root cause
    assert [v["value"] for v in values[1:50]] == [f"wrapper layer {i}" for i in range(1, 50)]
    assert [v["value"] for v in values[50:]] == [f"wrapper layer {i}" for i in range(200, 250)]


def test_a_long_chain_of_long_messages_is_shrunk_not_dropped(
    sentry_server: SentryServer,
) -> None:
    init(sentry_server)
    stm.capture_exception(_wrapped_chain(150, "x" * 9000, depth=12))
    assert stm.flush(5)
    (event,) = sentry_server.events()
    values = event["exception"]["values"]
    assert len(values) == 100 and values[0]["type"] == "ValueError"
    assert all(len(v["value"]) <= 1024 for v in values)  # 100 x 8 KiB, and 1000 frames
    assert sum(len(v["stacktrace"]["frames"]) for v in values) > 900


def test_an_exception_whose_str_fails_is_sent_with_its_repr(sentry_server: SentryServer) -> None:
    """As sentry-sdk: ``repr()`` when ``str()`` raises or gives a non-str; the fixed text
    only when ``repr()`` fails too."""

    class BadStr(Exception):
        def __str__(self) -> str:
            return str(self.args[1])  # IndexError

    class NonStr(Exception):
        def __str__(self) -> str:
            return self.args[0]  # type: ignore[no-any-return]  # an int: TypeError

    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str")

        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    init(sentry_server)
    for exc in (BadStr("order 42 failed"), NonStr(503), Broken()):
        assert stm.capture_exception(exc) is not None
    assert stm.flush(5) and sentry_server.wait_for(3)
    values = sorted(e["exception"]["values"][-1]["value"] for e in sentry_server.events())
    assert values == ["<unprintable exception>", "BadStr('order 42 failed')", "NonStr(503)"]
