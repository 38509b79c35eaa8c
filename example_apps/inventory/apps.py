"""The inventory Django app (the project and the app are this one package)."""

from __future__ import annotations

from django.apps import AppConfig


class InventoryConfig(AppConfig):
    name = "example_apps.inventory"
    label = "inventory"
    default_auto_field = "django.db.models.BigAutoField"
