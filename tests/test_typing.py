"""The package's type hints as a user's ``mypy --strict`` sees them (``py.typed``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sentry_tracing_mw

pytest.importorskip("mypy")

USAGE = Path(__file__).with_name("typed_usage.py")


def test_the_public_api_type_checks_as_users_write_it(tmp_path: Path) -> None:
    # From outside the project (its mypy settings do not apply), on the package as this
    # interpreter imports it: what a user's own `mypy --strict` reports for the API.md
    # examples.
    package = Path(sentry_tracing_mw.__file__).parent
    assert (package / "py.typed").is_file()
    shutil.copy(USAGE, tmp_path / "app_code.py")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "app_code.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found in 1 source file" in result.stdout
