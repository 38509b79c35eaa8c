"""URLconf for the hostile-header tests (``ROOT_URLCONF`` override): only ``/echo``."""

from __future__ import annotations

from django.urls import path

from .apps import django_echo_view

urlpatterns = [path("echo", django_echo_view)]
