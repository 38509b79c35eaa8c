"""Template render spans and the ``sentry_tracing_mw`` tag library registration."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

from ..._context import CURRENT_SPAN
from ._unsent import count_unsent

__all__ = ["install_templates", "register_tag_library"]

logger = logging.getLogger("sentry_tracing_mw")

_ORIGIN = "auto.template.django"
_MARK = "__sentry_tracing_mw__"
LIBRARY_NAME = "sentry_tracing_mw"
#: Where Django's own form templates live, by name and on disk.
_FORMS_PREFIX = "django/forms/"
_FORM_ENGINE = "_sentry_tracing_mw_form_engine"


def _template_name(template: Any) -> str:
    return template.name or "<string>"


def _partial_name(partial: Any) -> str:
    """A Django 6 partial as it is asked for: ``page.html#card``."""
    origin = getattr(partial, "origin", None)
    return f"{getattr(origin, 'template_name', None) or '<string>'}#{partial.name}"


def _inline_partial(partial: Any, parent: Any) -> bool:
    """A ``{% partial %}`` rendered inside its own template's render (often in a loop):
    part of that template's span, not a span of its own."""
    described = parent._description
    if parent._op != "template.render" or not isinstance(described, str):
        return False
    name = getattr(getattr(partial, "origin", None), "template_name", None)
    return isinstance(name, str) and (described == name or described.startswith(name + "#"))


def _forms_dir() -> str:
    import django.forms

    return os.path.join(os.path.dirname(django.forms.__file__), "templates")


def _is_form_engine(engine: Any) -> bool:
    """The private engine of a ``django.forms.renderers`` renderer: not one of the
    project's ``TEMPLATES`` engines (which may list the form templates' directory in
    ``DIRS`` too, for ``TemplatesSetting``), built with that directory as its only one."""
    dirs = engine.dirs
    if not (len(dirs) == 1 and os.fspath(dirs[0]) == _forms_dir()):
        return False
    from django.template import engines

    return all(getattr(backend, "engine", None) is not engine for backend in engines.all())


def _form_template(template: Any, parent: Any) -> bool:
    """A template rendered for a form (a widget, its attrs, a label, an error list): by a
    form renderer's engine, or Django's own under ``django/forms/`` (``TemplatesSetting``).
    A formset page renders hundreds; the page's own template has the span."""
    engine = template.engine
    flag = getattr(engine, _FORM_ENGINE, None)
    if flag is None:  # decided once per engine
        flag = _is_form_engine(engine)
        setattr(engine, _FORM_ENGINE, flag)
    if flag:
        return True
    name = template.name
    return isinstance(name, str) and name.startswith(_FORMS_PREFIX)


def _wrap_render(
    original: Callable[..., Any],
    describe: Callable[[Any], str] = _template_name,
    skip: Callable[[Any, Any], bool] | None = None,
) -> Callable[..., Any]:
    @functools.wraps(original)
    def render(self: Any, context: Any) -> Any:
        parent = CURRENT_SPAN.get()
        if parent is None:
            return original(self, context)
        if skip is not None:
            try:
                skipped = skip(self, parent)
            except Exception:
                logger.debug("deciding on a template span failed", exc_info=True)
                skipped = True
            if skipped:
                return original(self, context)
        if not parent._recording:  # counted as the query wrapper counts its spans
            count_unsent(parent)
            return original(self, context)
        try:
            span = parent.start_child("template.render", describe(self), origin=_ORIGIN)
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
    ``{% include %}`` included, not a form renderer's templates) and Django 6's
    ``PartialTemplate.render`` (``render(request, "page.html#card")``) once per process."""
    from django.template import base

    if not getattr(base.Template.render, _MARK, False):
        base.Template.render = _wrap_render(base.Template.render, skip=_form_template)
    partial = getattr(base, "PartialTemplate", None)
    if partial is not None and not getattr(partial.render, _MARK, False):
        partial.render = _wrap_render(partial.render, _partial_name, _inline_partial)


def register_tag_library() -> None:
    """Make ``{% load sentry_tracing_mw %}`` work in every ``DjangoTemplates`` engine,
    without the app in ``INSTALLED_APPS`` (called when a middleware is built: templates
    rendered before, or in a process that builds none, need the app or the ``libraries``
    option, see the README)."""
    from django.template import engines
    from django.template.backends.django import DjangoTemplates

    from .templatetags.sentry_tracing_mw import register

    for alias in engines.templates:
        backend = engines[alias]
        if isinstance(backend, DjangoTemplates):
            backend.engine.template_libraries.setdefault(LIBRARY_NAME, register)
