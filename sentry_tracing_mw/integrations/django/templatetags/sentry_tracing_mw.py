"""``{% load sentry_tracing_mw %}{% sentry_trace_meta %}``: trace meta tags for the browser."""

from __future__ import annotations

from django import template
from django.utils.safestring import SafeString, mark_safe

from ...._api import trace_meta_tags

register = template.Library()


def sentry_trace_meta() -> SafeString:
    """The ``sentry-trace`` and ``baggage`` ``<meta>`` tags of the current span."""
    return mark_safe(trace_meta_tags())


register.simple_tag(sentry_trace_meta)
