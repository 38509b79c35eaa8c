"""Views of the inventory service: every request runs real ORM queries (``db`` spans)."""

from __future__ import annotations

import json
from typing import Any

from django.db import transaction
from django.db.models import F
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from .models import Product, Reservation, ReservationLine


def _product(p: Product) -> dict[str, Any]:
    return {"sku": p.sku, "name": p.name, "stock": p.stock}


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


@require_GET
def products(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"products": [_product(p) for p in Product.objects.order_by("sku")]})


@require_GET
def product(request: HttpRequest, sku: str) -> JsonResponse:
    found = Product.objects.filter(sku=sku).first()
    if found is None:
        return JsonResponse({"error": "unknown sku", "missing": [sku]}, status=404)
    return JsonResponse(_product(found))


@require_POST
def reserve(request: HttpRequest) -> JsonResponse:
    """Reserve stock for a cart: ``{"cart_id": ..., "items": [{"sku": ..., "quantity": n}]}``.

    201 with the reservation; 404 when a sku is unknown; 409 when stock is short.
    """
    try:
        body = json.loads(request.body)
        cart_id = str(body["cart_id"])
        wanted: dict[str, int] = {}
        for line in body["items"]:
            wanted[str(line["sku"])] = wanted.get(str(line["sku"]), 0) + int(line["quantity"])
    except (ValueError, KeyError, TypeError):
        return JsonResponse(
            {"error": 'expected {"cart_id": ..., "items": [{"sku": ..., "quantity": n}]}'},
            status=400,
        )
    if not wanted or min(wanted.values()) <= 0:
        return JsonResponse({"error": "a reservation needs positive quantities"}, status=400)
    with transaction.atomic():
        found = {p.sku: p for p in Product.objects.filter(sku__in=list(wanted))}
        missing = sorted(set(wanted) - set(found))
        if missing:
            return JsonResponse({"error": "unknown sku", "missing": missing}, status=404)
        short = sorted(sku for sku, qty in wanted.items() if found[sku].stock < qty)
        if short:
            return JsonResponse({"error": "not enough stock", "short": short}, status=409)
        reservation = Reservation.objects.create(cart_id=cart_id)
        ReservationLine.objects.bulk_create(
            ReservationLine(reservation=reservation, product=found[sku], quantity=qty)
            for sku, qty in wanted.items()
        )
        for sku, qty in wanted.items():
            Product.objects.filter(pk=found[sku].pk).update(stock=F("stock") - qty)
    return JsonResponse(
        {
            "reservation": reservation.pk,
            "cart_id": cart_id,
            "lines": [{"sku": sku, "quantity": qty} for sku, qty in wanted.items()],
        },
        status=201,
    )
