"""Optional Django app: ``INSTALLED_APPS += ["sentry_tracing_mw.integrations.django"]``.

Makes the ``sentry_tracing_mw`` template tag library discoverable the standard way and
installs the ORM / template / exception hooks at startup. The middleware does both itself.
"""

from __future__ import annotations

from django.apps import AppConfig


class SentryTracingConfig(AppConfig):  # type: ignore[misc]
    """App config (label ``sentry_tracing_mw``)."""

    name = "sentry_tracing_mw.integrations.django"
    label = "sentry_tracing_mw"
    verbose_name = "Sentry tracing"
    default = True

    def ready(self) -> None:
        from . import _install_hooks

        _install_hooks(tag_library=False)  # found through INSTALLED_APPS
