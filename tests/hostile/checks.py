"""Assertions shared by the hardening tests."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_HEX32 = re.compile(r"[0-9a-f]{32}")
# 6 decimals when we made or reformatted it; a plain decimal from upstream stays as received
_RAND = re.compile(r"0\.[0-9]{1,24}")


def assert_valid_dsc(dsc: Any, trace_id: str | None = None) -> None:
    """What we put in an envelope's ``trace`` header, whatever came in (protocol §10)."""
    assert isinstance(dsc, dict), dsc
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in dsc.items()), dsc
    tid = dsc.get("trace_id")
    assert isinstance(tid, str) and _HEX32.fullmatch(tid) and tid != "0" * 32, dsc
    if trace_id is not None:
        assert tid == trace_id, (dsc, trace_id)
    rand = dsc.get("sample_rand")
    if rand is not None:
        assert _RAND.fullmatch(rand), dsc
    rate = dsc.get("sample_rate")
    if rate is not None:
        assert rate.strip() == rate, dsc
        assert 0.0 <= float(rate) <= 1.0, dsc
    sampled = dsc.get("sampled")
    if sampled is not None:
        assert sampled in ("true", "false"), dsc


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def capture_logs(*names: str) -> Iterator[list[logging.LogRecord]]:
    """Every record (DEBUG and up) of the named loggers, from any thread."""
    handler = _Collect()
    loggers = [logging.getLogger(n) for n in names or ("",)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


def errors_in(records: list[logging.LogRecord]) -> list[str]:
    """ERROR-and-above records, formatted (with the exception) for an assert message."""
    out = []
    for r in records:
        if r.levelno >= logging.ERROR:
            text = f"{r.name}: {r.getMessage()}"
            if r.exc_info and r.exc_info[1] is not None:
                text += f" [{type(r.exc_info[1]).__name__}: {r.exc_info[1]}]"
            out.append(text)
    return out
