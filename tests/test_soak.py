"""Soak: ``benchmarks/soak.py`` under steady load shows no upward memory trend.

The fast tier runs the 2-minute version (WSGI: Flask on werkzeug's threaded server); the slow
tier runs the documented 10-minute soak for WSGI and a 2-minute one for ASGI (Starlette on
uvicorn). The script samples RSS and the interpreter's allocated-block count every 10 s
(tracemalloc would double the app's CPU and starve the sender), fits a line after a warm-up
and exits non-zero when a slope exceeds its threshold, a request failed, or the local
Sentry sink received fewer transactions than requests were served.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOAK = ROOT / "benchmarks" / "soak.py"


def run_soak(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(SOAK), "--json", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.exists(), proc.stderr[-5000:]
    result: dict[str, Any] = json.loads(out.read_text())
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    assert proc.returncode == 0, result["problems"]
    return result


def check(result: dict[str, Any], duration: float) -> None:
    assert result["pass"] and result["problems"] == []
    load = result["load"]
    assert load["failed"] == 0
    served = load["ok"] + load["errors_expected"]
    assert served >= 0.8 * result["rate_target"] * duration  # the load really ran
    assert result["sink"]["transactions"] >= served  # everything was delivered
    assert result["sink"]["events"] >= load["errors_expected"]
    assert len(result["samples"]) >= duration / 10  # sampled every 10 s
    assert result["rss_slope_mb_per_min"] <= 2.0
    assert result["heap_metric"] == "blocks"
    assert result["heap_slope_per_min"] <= 1000  # allocated Python blocks


@pytest.mark.timeout(400)
def test_soak_two_minutes_wsgi(tmp_path: Path) -> None:
    check(run_soak(tmp_path, "--duration", "120", "--server", "wsgi", "--rate", "80"), 120)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_soak_ten_minutes_wsgi(tmp_path: Path) -> None:
    check(run_soak(tmp_path, "--duration", "600", "--server", "wsgi"), 600)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_soak_two_minutes_asgi(tmp_path: Path) -> None:
    check(run_soak(tmp_path, "--duration", "120", "--server", "asgi"), 120)
