"""URL routes of the inventory service."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("healthz", views.healthz),
    path("products/", views.products),
    path("products/<str:sku>/", views.product),
    path("reservations/", views.reserve),
]
