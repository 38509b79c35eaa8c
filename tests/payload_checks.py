"""Validity checks for envelopes our transport sends, plus sample payload builders."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sentry_tracing_mw._client_reports import VALID_REASONS
from sentry_tracing_mw._envelope import decode_body, parse_envelope
from sentry_tracing_mw._ratelimits import KNOWN_CATEGORIES

SHARED_DIR = Path(__file__).resolve().parent.parent.parent / "shared"
VALIDATOR = SHARED_DIR / "tools" / "validate_envelope.py"
_RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
MAX_BODY = 200 * 1024 * 1024


def sample_transaction(
    spans: int = 0, name: str = "/test", trace_id: str | None = None
) -> dict[str, Any]:
    """A minimal valid transaction payload with ``spans`` child spans."""
    trace_id = trace_id or uuid.uuid4().hex
    root = uuid.uuid4().hex[:16]
    start = time.time() - 1.0
    end = start + 0.5
    return {
        "type": "transaction",
        "event_id": uuid.uuid4().hex,
        "platform": "python",
        "transaction": name,
        "transaction_info": {"source": "custom"},
        "start_timestamp": start,
        "timestamp": end,
        "environment": "production",
        "sdk": {"name": "sentry.python.tracemw", "version": "0.1.0"},
        "contexts": {
            "trace": {
                "trace_id": trace_id,
                "span_id": root,
                "op": "http.server",
                "status": "ok",
                "origin": "manual",
            }
        },
        "spans": [
            {
                "trace_id": trace_id,
                "span_id": uuid.uuid4().hex[:16],
                "parent_span_id": root,
                "op": "db.query",
                "description": f"SELECT {i}",
                "status": "ok",
                "origin": "manual",
                "start_timestamp": start + 0.01 * i,
                "timestamp": start + 0.01 * i + 0.005,
                "data": {"db.system": "sqlite"},
            }
            for i in range(spans)
        ],
    }


def sample_error(trace_id: str | None = None) -> dict[str, Any]:
    """A minimal valid error event linked to a trace."""
    return {
        "event_id": uuid.uuid4().hex,
        "level": "error",
        "platform": "python",
        "timestamp": time.time(),
        "environment": "production",
        "sdk": {"name": "sentry.python.tracemw", "version": "0.1.0"},
        "exception": {
            "values": [
                {
                    "type": "ValueError",
                    "value": "boom",
                    "mechanism": {"type": "generic", "handled": True},
                }
            ]
        },
        "contexts": {
            "trace": {"trace_id": trace_id or uuid.uuid4().hex, "span_id": uuid.uuid4().hex[:16]}
        },
    }


def sample_dsc(trace_id: str) -> dict[str, str]:
    """The DSC matching a sampled trace."""
    return {
        "trace_id": trace_id,
        "public_key": "public",
        "sample_rate": "1.0",
        "sample_rand": "0.500000",
        "sampled": "true",
        "environment": "production",
    }


def _decode(raw: bytes) -> bytes:
    if raw[:2] == b"\x1f\x8b":
        return decode_body(raw, "gzip", MAX_BODY)
    if raw[:1] == b"\x78":
        return decode_body(raw, "deflate", MAX_BODY)
    return raw


def _relay_check(payload: bytes, where: str) -> None:
    from sentry_relay import processing

    out = processing.StoreNormalizer().normalize_event(raw_event=payload)
    errors = out.get("errors") or []
    assert not errors, f"{where}: relay normalization errors: {errors}"
    assert out.get("type") in ("transaction", "error", "default", None), (
        f"{where}: type {out.get('type')}"
    )


def check_envelope(raw: bytes, *, require_trace: bool = True) -> None:
    """Assert a received body (gzip/zlib/identity) is a valid envelope of ours.

    ``require_trace=False`` accepts an event without a ``trace`` (DSC) envelope header, for
    transport tests that hand the transport no DSC on purpose; nothing else is relaxed.
    """
    env = parse_envelope(_decode(raw))
    sent_at = env.headers.get("sent_at")
    if sent_at is not None:
        assert isinstance(sent_at, str) and _RFC3339_UTC.match(sent_at), f"bad sent_at {sent_at!r}"
    bound = [it for it in env.items if it.type in ("transaction", "event")]
    assert len(bound) <= 1, "more than one event/transaction item"
    for i, item in enumerate(env.items):
        where = f"item {i} ({item.type})"
        assert item.headers.get("length") == len(item.payload), f"{where}: length missing or wrong"
        if item.type in ("transaction", "event"):
            body = item.json()
            assert isinstance(body, dict)
            assert _HEX32.match(body.get("event_id", "")), f"{where}: bad event_id"
            assert env.headers.get("event_id") == body["event_id"], f"{where}: event_id mismatch"
            trace = env.headers.get("trace")
            if trace is not None or require_trace or item.type == "transaction":
                assert isinstance(trace, dict) and trace.get("public_key"), (
                    f"{where}: no trace header"
                )
                assert all(isinstance(v, str) for v in trace.values()), (
                    f"{where}: non-str DSC value"
                )
            if item.type == "transaction":
                assert body.get("type") == "transaction"
                assert trace.get("trace_id") == body["contexts"]["trace"]["trace_id"]
            _relay_check(item.payload, where)
        elif item.type == "client_report":
            assert len(item.payload) <= 4096, f"{where}: client report over 4 KiB"
            report = item.json()
            entries = report.get("discarded_events")
            assert isinstance(entries, list) and entries, f"{where}: no discarded_events"
            for entry in entries:
                assert entry["reason"] in VALID_REASONS, entry
                assert entry["category"] in KNOWN_CATEGORIES, entry
                assert isinstance(entry["quantity"], int) and entry["quantity"] > 0, entry
            assert set(report) <= {"timestamp", "discarded_events"}, report
        else:
            raise AssertionError(f"{where}: unexpected item type")


class SharedValidatorRun:
    """The shared validator over many bodies in ONE subprocess, started at once.

    The bodies are written to a temporary directory and ``validate_envelope.py
    --require-relay`` runs over it in the background, so a caller can check the same bodies
    in-process meanwhile; :meth:`wait` asserts the result. Without ``../shared`` (a
    checkout without the shared directory) it warns and checks nothing.
    """

    def __init__(self, paths_or_bodies: Iterable[bytes | str | os.PathLike[str]]) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[str] | None = None
        inputs = list(paths_or_bodies)
        if not inputs:
            return
        if not VALIDATOR.is_file():
            warnings.warn(f"shared validator not found at {VALIDATOR}; check skipped", stacklevel=3)
            return
        self._tmp = tempfile.TemporaryDirectory(prefix="stm-envelopes-")
        for i, entry in enumerate(inputs):
            data = entry if isinstance(entry, bytes) else Path(entry).read_bytes()
            (Path(self._tmp.name) / f"{i:05d}.envelope").write_bytes(data)
        self._proc = subprocess.Popen(
            [sys.executable, str(VALIDATOR), "--require-relay", "--quiet", self._tmp.name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def cancel(self) -> None:
        """Stop the run (the caller already failed) and remove the files."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.communicate()
            self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def wait(self, timeout: float = 120) -> None:
        """Wait for the run; assert it passed (the verbose report is printed if not)."""
        proc, tmp = self._proc, self._tmp
        if proc is None or tmp is None:
            return
        try:
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise
            if proc.returncode != 0:
                verbose = subprocess.run(
                    [sys.executable, str(VALIDATOR), "--require-relay", tmp.name],
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
                print(verbose.stdout[-20000:], verbose.stderr[-5000:])
            assert proc.returncode == 0, f"shared validator failed:\n{stdout}\n{stderr}"
        finally:
            self._proc = None
            self._tmp = None
            tmp.cleanup()


def check_with_shared_validator(paths_or_bodies: Iterable[bytes | str | os.PathLike[str]]) -> None:
    """Run the shared validator once over all bodies; warn (never fail) when it is absent."""
    SharedValidatorRun(paths_or_bodies).wait()


def check_all(bodies: list[bytes]) -> None:
    """Every body through :func:`check_envelope` (our checks and sentry-relay's normalizer)
    and through the shared validator in one batched run alongside."""
    run = SharedValidatorRun(bodies)
    try:
        for i, raw in enumerate(bodies):
            try:
                check_envelope(raw)
            except AssertionError as exc:
                raise AssertionError(f"received body {i} of {len(bodies)}: {exc}") from exc
    except BaseException:
        run.cancel()
        raise
    run.wait()
