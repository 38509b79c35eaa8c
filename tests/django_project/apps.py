"""App config for the test project."""

from __future__ import annotations

from django.apps import AppConfig


class DjangoProjectConfig(AppConfig):
    """The test app (label ``django_project``)."""

    name = "tests.django_project"
    label = "django_project"
