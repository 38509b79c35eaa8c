"""Install the JavaScript test peer: ``npm ci`` here (``@sentry/node`` as pinned in
``package-lock.json``). ``tox`` runs it before the tests; it never fails the run: without
Node.js, npm or the package registry it says why, and the JavaScript interop tests skip.

    python tests/js_peer/install.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: npm writes this when it has installed the lock file's packages.
INSTALLED_LOCK = HERE / "node_modules" / ".package-lock.json"
TIMEOUT = 600


def main() -> int:
    lock = HERE / "package-lock.json"
    if INSTALLED_LOCK.exists() and INSTALLED_LOCK.stat().st_mtime >= lock.stat().st_mtime:
        return 0  # installed from this lock file already
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        print("js_peer: Node.js or npm not found: the JavaScript interop tests will skip")
        return 0
    try:
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
            cwd=HERE,
            timeout=TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"js_peer: npm ci failed ({exc}): the JavaScript interop tests will skip")
        return 0
    if proc.returncode != 0:
        print(
            f"js_peer: npm ci exited with {proc.returncode}: the JavaScript interop tests will skip"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
