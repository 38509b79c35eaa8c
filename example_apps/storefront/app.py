"""The storefront: ``GET /checkout/<cart_id>`` reserves stock, gets a quote, renders a page.

Per checkout: ``requests`` -> inventory ``POST /reservations/`` (Django, SQLite), then
``httpx`` -> pricing ``POST /quote`` (FastAPI). Both calls become ``http.client`` spans and
carry ``sentry-trace`` / ``baggage`` / ``traceparent``, so the three services' transactions
form one trace. The page carries the trace's ``<meta>`` tags (``{{ sentry_trace_meta }}``),
for a browser SDK to continue the trace.

Carts are made up from their id (the same id always gives the same cart). Special ids:

* ``promo-<code>``: the cart uses coupon ``<code>``: ``promo-trace20`` works,
  ``promo-spring2019`` is an expired coupon that crashes pricing (500): the storefront
  reports the failure as an error event and answers 502.
* ``ghost-<anything>``: the cart holds a product the inventory does not know: 409, no quote.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import httpx
import requests
from flask import Flask, render_template

import sentry_tracing_mw as stm
from example_apps import _config
from sentry_tracing_mw.integrations.flask import FlaskTracing

RELEASE = "storefront@1.4.0"
PRODUCTS = ["sku-mug", "sku-tee", "sku-hoodie", "sku-socks", "sku-sticker", "sku-poster"]
GHOST_PRODUCT = "sku-ghost"
TIMEOUT = float(os.environ.get("STOREFRONT_UPSTREAM_TIMEOUT") or "10")

app = Flask(__name__)
app.config.update(
    SENTRY_DSN=_config.dsn(),
    SENTRY_TRACES_SAMPLE_RATE=_config.traces_sample_rate(),
    SENTRY_RELEASE=RELEASE,
    SENTRY_ENVIRONMENT=_config.environment(),
    SENTRY_IGNORE_PATHS=["/healthz"],
)
FlaskTracing(app)

# one pooled client for the whole process (httpx clients are thread-safe)
pricing = httpx.Client(base_url=_config.pricing_url(), timeout=TIMEOUT)
INVENTORY = _config.inventory_url()


def cart_for(cart_id: str) -> dict[str, Any]:
    """The (made up, stable) content of a cart."""
    digest = hashlib.sha256(cart_id.encode()).digest()
    count = 1 + digest[0] % 3
    items: dict[str, int] = {}
    for i in range(count):
        sku = PRODUCTS[digest[1 + i] % len(PRODUCTS)]
        items[sku] = items.get(sku, 0) + 1 + digest[5 + i] % 3
    if cart_id.startswith("ghost-"):
        items[GHOST_PRODUCT] = 1
    coupon = cart_id[len("promo-") :].upper() if cart_id.startswith("promo-") else None
    return {
        "cart_id": cart_id,
        "items": [{"sku": sku, "quantity": qty} for sku, qty in items.items()],
        "coupon": coupon,
    }


def render(status: int, **context: Any) -> tuple[str, int]:
    # Jinja renders are not instrumented automatically: a manual span
    with stm.start_span("template.render", "checkout.html"):
        return render_template("checkout.html", **context), status


@app.route("/healthz")
def healthz() -> str:
    return "ok"


@app.route("/")
def index() -> tuple[str, int]:
    examples = ["1001", "1002", "promo-trace20", "promo-spring2019", "ghost-1"]
    return render(200, cart=None, examples=examples)


@app.route("/checkout/<cart_id>")
def checkout(cart_id: str) -> tuple[str, int]:
    cart = cart_for(cart_id)
    # 1. reserve stock (requests -> Django)
    reserved = requests.post(
        f"{INVENTORY}/reservations/",
        json={"cart_id": cart_id, "items": cart["items"]},
        timeout=TIMEOUT,
    )
    if reserved.status_code in (404, 409):
        detail = reserved.json()
        problem = f"{detail['error']}: {', '.join(detail.get('missing') or detail.get('short'))}"
        return render(409, cart=cart, problem=problem)
    reserved.raise_for_status()  # anything else is a bug: 500, reported by FlaskTracing
    # 2. price it (httpx -> FastAPI)
    try:
        quoted = pricing.post("/quote", json=cart)
        quoted.raise_for_status()
    except httpx.HTTPError as exc:
        # handled: the customer gets a clear page, we get an error event linked to this
        # request's transaction (and the pricing service reports its own crash)
        event_id = stm.capture_exception(exc)
        return render(
            502,
            cart=cart,
            problem=f"pricing is unavailable right now (reference {event_id})",
        )
    return render(200, cart=cart, reservation=reserved.json(), quote=quoted.json())
