"""Importing an integration without its framework: a clear error naming the extra."""

from __future__ import annotations

import subprocess
import sys

import pytest

_CASES = [
    ("flask", "flask", "flask"),
    ("starlette", "starlette", "starlette"),
    ("fastapi", "fastapi", "fastapi"),
    ("django", "django", "django"),
]


def _run(code: str) -> str:
    """The output of ``code`` run in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout


@pytest.mark.parametrize(("integration", "blocked", "extra"), _CASES)
def test_missing_framework_names_the_extra(integration: str, blocked: str, extra: str) -> None:
    # sys.modules[name] = None makes "import name" fail as a missing module does.
    code = (
        "import sys\n"
        f"sys.modules[{blocked!r}] = None\n"
        "try:\n"
        f"    import sentry_tracing_mw.integrations.{integration}\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc.name)\n"
        "    print(exc)\n"
        "else:\n"
        "    print('imported')\n"
    )
    out = _run(code).splitlines()
    assert out[0].split(".")[0] == blocked  # the package or one of its modules
    assert f"sentry_tracing_mw.integrations.{integration} needs {extra}" in out[1]
    assert f"pip install 'sentry-tracing-mw[{extra}]'" in out[1]


def test_django_integration_without_django_but_with_asgiref() -> None:
    # asgiref is installed by other frameworks too: Django itself is what is missing.
    code = (
        "import sys\n"
        "sys.modules['django'] = None\n"
        "import asgiref.sync\n"
        "try:\n"
        "    import sentry_tracing_mw.integrations.django\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc.name)\n"
    )
    assert _run(code).split() == ["django"]
