"""Products with a stock level, and reservations of stock for a cart."""

from __future__ import annotations

from django.db import models


class Product(models.Model):
    sku = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=100)
    stock = models.PositiveIntegerField()

    def __str__(self) -> str:
        return f"{self.sku} ({self.stock} in stock)"


class Reservation(models.Model):
    cart_id = models.CharField(max_length=64, db_index=True)
    created = models.DateTimeField(auto_now_add=True)


class ReservationLine(models.Model):
    reservation = models.ForeignKey(Reservation, models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, models.PROTECT, related_name="+")
    quantity = models.PositiveIntegerField()
