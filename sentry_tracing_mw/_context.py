"""Context variables: the current span, the request's propagation context, suppression.

Everything that must follow a request across ``await`` points and ``contextvars``-aware
executors lives here. Values are always set with a token and reset in ``finally`` blocks.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._tracing import PropagationContext, Span

__all__ = [
    "CURRENT_SPAN",
    "ON_SENDER",
    "PROPAGATION_CONTEXT",
    "SUPPRESS_INSTRUMENTATION",
    "request_context",
]

#: The span that new spans attach to (a ``Transaction`` at the root of a request).
CURRENT_SPAN: ContextVar[Span | None] = ContextVar("sentry_tracing_mw.span", default=None)

#: The trace a request belongs to when no span is current (untraced methods, tracing
#: disabled): outgoing calls still propagate it and error events still link to it.
PROPAGATION_CONTEXT: ContextVar[PropagationContext | None] = ContextVar(
    "sentry_tracing_mw.propagation", default=None
)


def request_context() -> PropagationContext | None:
    """The trace of the request being handled when no span is current (an untraced method,
    tracing disabled), else None: an ambient trace (``Client._ambient_context``, started by a
    read outside any request) is not a request's, so outgoing calls and request hooks
    leave it alone."""
    ctx = PROPAGATION_CONTEXT.get()
    if ctx is None or ctx._ambient:
        return None
    return ctx


#: True inside our own machinery (the transport's worker thread): outgoing HTTP calls made
#: there are never traced and never given trace headers.
SUPPRESS_INSTRUMENTATION: ContextVar[bool] = ContextVar("sentry_tracing_mw.suppress", default=False)

#: True on the transport's worker thread, where the app's ``before_send*`` hooks and
#: values' reprs run: nothing there may stop the thread, and an error captured there is
#: not sent (it would run the hook again).
ON_SENDER: ContextVar[bool] = ContextVar("sentry_tracing_mw.on_sender", default=False)
