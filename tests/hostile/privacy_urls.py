"""URLconf for the privacy tests (``ROOT_URLCONF`` override)."""

from __future__ import annotations

from django.urls import path

from .privacy_apps import django_boom, django_call, django_page

urlpatterns = [
    path("page", django_page),
    path("boom", django_boom),
    path("call", django_call),
]
