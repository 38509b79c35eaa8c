"""sentry-sdk as a test peer, in its own Python process (it patches globals when it starts).

A script passed to :func:`run_sdk_script` runs after :data:`CAPTURE`, so it can call
``sentry_sdk.init(..., transport=Capture)`` and read every transaction payload that
sentry-sdk sent from ``transactions``. It prints its result as JSON on its last line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: Prepended to every script: a transport that keeps transaction payloads, in order.
CAPTURE = r"""
from sentry_sdk.transport import Transport

transactions = []

class Capture(Transport):
    def capture_envelope(self, envelope):
        for item in envelope.items:
            if item.type == "transaction":
                transactions.append(item.payload.json)
"""


def run_sdk_script(script: str, *args: str) -> Any:
    """Run ``script`` (after :data:`CAPTURE`) with ``args`` in a fresh Python at the repository
    root; assert it succeeded and return the JSON it printed last."""
    proc = subprocess.run(
        [sys.executable, "-c", CAPTURE + script, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])
