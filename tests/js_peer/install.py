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
NODE_MODULES = HERE / "node_modules"
#: npm writes this once it has installed every package of the lock file.
INSTALLED_LOCK = NODE_MODULES / ".package-lock.json"
#: The oldest Node.js the pinned packages run on (OpenTelemetry's: ^18.19.0 || >=20.6.0).
MIN_NODE = (18, 19)
#: npm's own network timeouts are minutes long: a hanging registry must not hold the run.
TIMEOUT = 180
NPM_CI = [
    "ci",
    "--no-audit",
    "--no-fund",
    "--ignore-scripts",
    "--loglevel=error",
    "--fetch-timeout=30000",
    "--fetch-retries=1",
]


def installed() -> bool:
    """Whether npm installed this lock file's packages completely."""
    lock = HERE / "package-lock.json"
    return INSTALLED_LOCK.exists() and INSTALLED_LOCK.stat().st_mtime >= lock.stat().st_mtime


def node_version(node: str) -> tuple[int, ...] | None:
    """``node --version`` as numbers (None when it cannot be read)."""
    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
        return tuple(int(part) for part in out.lstrip("v").split(".")[:2])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def main() -> int:
    if installed():
        return 0
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        print("js_peer: Node.js or npm not found: the JavaScript interop tests will skip")
        return 0
    version = node_version(node)
    if version is None or version < MIN_NODE:
        print(f"js_peer: Node.js {version} is older than {MIN_NODE}: the tests will skip")
        return 0
    failure = None
    try:
        proc = subprocess.run([npm, *NPM_CI], cwd=HERE, timeout=TIMEOUT)
        if proc.returncode != 0:
            failure = f"npm ci exited with {proc.returncode}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        failure = f"npm ci failed ({exc})"
    if failure is not None:
        shutil.rmtree(NODE_MODULES, ignore_errors=True)  # no half-installed peer
        print(f"js_peer: {failure}: the JavaScript interop tests will skip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
