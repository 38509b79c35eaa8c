"""Test settings: no SENTRY_* init options here (tests call ``stm.init`` themselves)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

SECRET_KEY = "test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.django_project.urls"
USE_TZ = True
USE_I18N = True
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("de", "German")]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "tests.django_project",
]

MIDDLEWARE = [
    "sentry_tracing_mw.integrations.django.TracingMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [str(HERE / "templates")],
        "APP_DIRS": False,
        "OPTIONS": {
            "context_processors": [
                "sentry_tracing_mw.integrations.django.context_processor",
            ],
        },
    }
]

_DB_DIR = os.environ.get("STM_TEST_DB_DIR") or tempfile.mkdtemp(prefix="stm-django-")
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(_DB_DIR, "db.sqlite3"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

# Django REST framework: JSON only, no authentication (no django.contrib.auth here)
REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
}
