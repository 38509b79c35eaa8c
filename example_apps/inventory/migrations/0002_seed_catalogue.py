"""Seed data: the catalogue the storefront sells (a data migration, so ``migrate`` seeds)."""

from __future__ import annotations

from typing import Any

from django.db import migrations

CATALOGUE = [
    ("sku-mug", "Tracing mug", 5000),
    ("sku-tee", "Span t-shirt", 5000),
    ("sku-hoodie", "Waterfall hoodie", 5000),
    ("sku-socks", "Baggage socks", 5000),
    ("sku-sticker", "Sampled sticker", 50000),
    ("sku-poster", "Trace tree poster", 5000),
]


def seed(apps: Any, schema_editor: Any) -> None:
    product = apps.get_model("inventory", "Product")
    for sku, name, stock in CATALOGUE:
        product.objects.update_or_create(sku=sku, defaults={"name": name, "stock": stock})


def unseed(apps: Any, schema_editor: Any) -> None:
    apps.get_model("inventory", "Product").objects.filter(
        sku__in=[sku for sku, _, _ in CATALOGUE]
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("inventory", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]
