"""Shared fixtures: every test starts with no initialized client and leaves none behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import sentry_tracing_mw._client as client_module
from sentry_tracing_mw._context import (
    CURRENT_SPAN,
    PROPAGATION_CONTEXT,
    SUPPRESS_INSTRUMENTATION,
)

from .sentry_server import sentry_server  # noqa: F401  (fixture re-export)


def reset_client() -> None:
    """Close the current client and forget it (as if ``init()`` was never called)."""
    client = client_module._client
    client_module._client = None
    client_module._initialized = False
    client_module._instrumented_by_init = False  # each test decides its own patching
    if client is not None:
        client.close(timeout=0.5)
    client_module._undo_debug_logging()  # what a test's debug=True set up


@pytest.fixture(autouse=True)
def _isolate_client() -> Iterator[None]:
    reset_client()
    yield
    reset_client()
    assert CURRENT_SPAN.get() is None, "a test left a span current"
    PROPAGATION_CONTEXT.set(None)


@pytest.fixture
def no_outgoing_headers() -> Iterator[None]:
    """The test thread's own HTTP calls carry no trace headers (another test may have
    instrumented http.client): use with ``pytest.mark.usefixtures("no_outgoing_headers")``."""
    token = SUPPRESS_INSTRUMENTATION.set(True)
    yield
    SUPPRESS_INSTRUMENTATION.reset(token)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tier (``@pytest.mark.slow``) runs only with ``SENTRY_TRACING_MW_SLOW=1``."""
    import os

    if os.environ.get("SENTRY_TRACING_MW_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow tier: set SENTRY_TRACING_MW_SLOW=1 (tox -e slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
