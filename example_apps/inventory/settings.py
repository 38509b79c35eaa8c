"""Django settings of the inventory service.

Tracing is three settings away: the middleware first in ``MIDDLEWARE`` and ``SENTRY_*``
options (any ``init()`` option as ``SENTRY_<OPTION_UPPERCASE>``).
"""

from __future__ import annotations

import os
from pathlib import Path

import django

from example_apps import _config

HERE = Path(__file__).resolve().parent

SECRET_KEY = "example-app-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
ROOT_URLCONF = "example_apps.inventory.urls"
WSGI_APPLICATION = "example_apps.inventory.wsgi.application"
USE_TZ = True

INSTALLED_APPS = ["example_apps.inventory"]

MIDDLEWARE = [
    "sentry_tracing_mw.integrations.django.TracingMiddleware",  # first: times everything
    "django.middleware.common.CommonMiddleware",
]

SENTRY_DSN = _config.dsn()
SENTRY_TRACES_SAMPLE_RATE = _config.traces_sample_rate()
SENTRY_RELEASE = "inventory@0.9.3"
SENTRY_ENVIRONMENT = _config.environment()
SENTRY_IGNORE_PATHS = ["/healthz"]

_sqlite_options: dict[str, object] = {"timeout": 20}
if django.VERSION >= (5, 1):
    # concurrent writers: take the write lock up front (no upgrade deadlocks) and use WAL
    _sqlite_options["transaction_mode"] = "IMMEDIATE"
    _sqlite_options["init_command"] = "PRAGMA journal_mode=WAL;"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("INVENTORY_DB") or str(HERE / "inventory.sqlite3"),
        "OPTIONS": _sqlite_options,
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR"}},
}
