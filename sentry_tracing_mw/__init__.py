"""sentry-tracing-mw: Sentry-compatible distributed tracing for Python web apps.

Add one middleware, set a DSN, and every request becomes a transaction named after its
route; outgoing HTTP calls become child spans that carry the trace downstream.
"""

from . import _log  # noqa: F401  (first: the package logger never raises into callers)
from ._api import (
    capture_exception,
    close,
    continue_trace,
    flush,
    get_current_span,
    get_trace_headers,
    set_transaction_name,
    start_span,
    start_transaction,
    trace,
    trace_meta_tags,
    use_span,
    wrap_context,
)
from ._client import Client, get_client, init, is_initialized
from ._errors import ConfigurationError
from ._sampling import SamplingContext
from ._tracing import PropagationContext, Span, Transaction
from ._version import VERSION, __version__

__all__ = [
    "VERSION",
    "Client",
    "ConfigurationError",
    "PropagationContext",
    "SamplingContext",
    "Span",
    "Transaction",
    "__version__",
    "capture_exception",
    "close",
    "continue_trace",
    "flush",
    "get_client",
    "get_current_span",
    "get_trace_headers",
    "init",
    "is_initialized",
    "set_transaction_name",
    "start_span",
    "start_transaction",
    "trace",
    "trace_meta_tags",
    "use_span",
    "wrap_context",
]
