"""A small Django project for the integration tests (SQLite, configured once per process)."""

from __future__ import annotations

import os

SETTINGS_MODULE = "tests.django_project.settings"


def setup() -> None:
    """Configure Django with this project's settings (idempotent, once per process)."""
    import django
    from django.apps import apps

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
    if os.environ["DJANGO_SETTINGS_MODULE"] != SETTINGS_MODULE:
        raise RuntimeError("another Django settings module is configured in this process")
    if not apps.ready:
        django.setup()


def create_tables() -> None:
    """Create the test models' tables (idempotent)."""
    from django.db import connection

    from .models import Item

    if Item._meta.db_table not in connection.introspection.table_names():
        with connection.schema_editor() as editor:
            editor.create_model(Item)
