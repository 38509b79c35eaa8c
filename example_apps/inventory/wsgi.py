"""WSGI entry point: ``gunicorn example_apps.inventory.wsgi:application``."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_apps.inventory.settings")

application = get_wsgi_application()
