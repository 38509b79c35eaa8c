"""Template render spans and the ``sentry_tracing_mw`` tag library registration."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from ..._context import CURRENT_SPAN

__all__ = ["install_templates", "register_tag_library"]

logger = logging.getLogger("sentry_tracing_mw")

_ORIGIN = "auto.template.django"
_MARK = "__sentry_tracing_mw__"
LIBRARY_NAME = "sentry_tracing_mw"


def _wrap_render(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def render(self: Any, context: Any) -> Any:
        parent = CURRENT_SPAN.get()
        if parent is None or not parent._recording:
            return original(self, context)
        try:
            span = parent.start_child("template.render", self.name or "<string>", origin=_ORIGIN)
            token = CURRENT_SPAN.set(span)
        except Exception:
            logger.debug("starting a template span failed", exc_info=True)
            return original(self, context)
        try:
            return original(self, context)
        except BaseException:
            span._status = "internal_error"
            raise
        finally:
            CURRENT_SPAN.reset(token)
            try:
                span.finish()
            except Exception:
                logger.exception("sentry_tracing_mw: ending a template span failed")

    setattr(render, _MARK, True)
    return render


def install_templates() -> None:
    """Wrap ``django.template.base.Template.render`` (every Django-language render,
    ``{% include %}`` included) once per process."""
    from django.template.base import Template

    if getattr(Template.render, _MARK, False):
        return
    Template.render = _wrap_render(Template.render)


def register_tag_library() -> None:
    """Make ``{% load sentry_tracing_mw %}`` work in every ``DjangoTemplates`` engine,
    without the app in ``INSTALLED_APPS``."""
    from django.template import engines
    from django.template.backends.django import DjangoTemplates

    from .templatetags.sentry_tracing_mw import register

    for alias in engines.templates:
        backend = engines[alias]
        if isinstance(backend, DjangoTemplates):
            backend.engine.template_libraries.setdefault(LIBRARY_NAME, register)
