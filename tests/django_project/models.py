"""Models for ORM span tests."""

from __future__ import annotations

from django.db import models


class Item(models.Model):
    """A named item."""

    name = models.CharField(max_length=50)

    class Meta:
        app_label = "django_project"
