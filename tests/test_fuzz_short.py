"""Run the atheris fuzz target (fuzz/fuzz_headers.py): a short run in CI, a long one slow.

Skipped cleanly when atheris is not installed (it needs a compiler on some platforms).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "fuzz" / "fuzz_headers.py"

pytest.importorskip("atheris", reason="atheris not installed (pip install atheris)")


def _fuzz(tmp_path: Path, seconds: int, max_len: int) -> tuple[str, int]:
    corpus = tmp_path / "corpus"
    subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "seeds.py"), str(corpus)], check=True, timeout=60
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(TARGET),
            f"-max_total_time={seconds}",
            f"-max_len={max_len}",
            f"-dict={ROOT / 'fuzz' / 'headers.dict'}",
            "-timeout=10",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "Uncaught Python exception" not in out and "crash-" not in out, out[-5000:]
    match = re.search(r"stat::number_of_executed_units:\s*(\d+)", out)
    assert match is not None, out[-3000:]
    return out, int(match.group(1))


def test_fuzz_short(tmp_path: Path) -> None:
    _, runs = _fuzz(tmp_path, seconds=10, max_len=4096)
    assert runs > 1000  # the target really ran (every seed plus mutations)


_LONG_MINUTES = int(os.environ.get("SENTRY_TRACING_MW_FUZZ_MINUTES", "10"))


@pytest.mark.slow
@pytest.mark.timeout(60 * _LONG_MINUTES + 300)  # the suite's 120 s default would cut it short
def test_fuzz_long(tmp_path: Path) -> None:
    minutes = _LONG_MINUTES
    out, runs = _fuzz(tmp_path, seconds=60 * minutes, max_len=8192)
    cov = re.findall(r"cov: (\d+)", out)
    print(f"fuzz: {runs} executions, coverage {cov[-1] if cov else '?'} edges, no crash")
    assert runs > 100_000
