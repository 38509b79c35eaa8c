"""The pricing service: ``POST /quote`` prices a cart, applies a coupon and adds tax.

All handlers are async. Tracing: one ``add_middleware`` line; the helper coroutines are
decorated with ``@stm.trace`` so they show up as child spans of the request's transaction.

On purpose, expired coupons are a bug here: ``apply_coupon`` raises ``CouponExpiredError``
instead of answering 4xx. The app's handler for ``PricingError`` turns it into a JSON 500 (a
handler, not an exception escaping to uvicorn, which would also drop the keep-alive
connection under the storefront's pooled client), and the tracing middleware reports every
exception a handler turns into a 5xx as an error event linked to the request's transaction.
Try cart ``promo-spring2019`` in the storefront.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

import sentry_tracing_mw as stm
from example_apps import _config
from sentry_tracing_mw.integrations.starlette import TracingMiddleware

RELEASE = "pricing@2.1.0"

#: unit prices in cents
PRICES = {
    "sku-mug": 1200,
    "sku-tee": 2200,
    "sku-hoodie": 4900,
    "sku-socks": 900,
    "sku-sticker": 250,
    "sku-poster": 1500,
}
#: percent off
COUPONS = {"WELCOME10": 10, "TRACE20": 20}
EXPIRED_COUPONS = {"SPRING2019", "SUMMER2020"}
TAX_RATE = 0.19


class PricingError(Exception):
    """Anything that went wrong while pricing."""


class CouponExpiredError(PricingError):
    """A coupon past its end date (the quote endpoint forgets to handle this)."""


class Line(BaseModel):
    sku: str
    quantity: int = Field(gt=0, le=100)


class QuoteRequest(BaseModel):
    cart_id: str
    items: list[Line] = Field(min_length=1)
    coupon: str | None = None


app = FastAPI(title="pricing")
app.add_middleware(
    TracingMiddleware,
    dsn=_config.dsn(),
    traces_sample_rate=_config.traces_sample_rate(),
    release=RELEASE,
    environment=_config.environment(),
    ignore_paths=("/healthz",),
)


@app.exception_handler(PricingError)
async def pricing_failed(request: Request, exc: PricingError) -> JSONResponse:
    return JSONResponse({"error": "pricing failed", "detail": str(exc)}, status_code=500)


@stm.trace(op="function")
async def price_lines(items: list[Line]) -> int:
    """Subtotal in cents (404 for an unknown sku)."""
    await asyncio.sleep(0.002)  # stands in for a price-list cache lookup
    unknown = sorted({line.sku for line in items if line.sku not in PRICES})
    if unknown:
        raise HTTPException(404, f"no price for {', '.join(unknown)}")
    return sum(PRICES[line.sku] * line.quantity for line in items)


@stm.trace(op="function")
async def apply_coupon(coupon: str | None, subtotal: int) -> int:
    """The discount in cents."""
    if not coupon:
        return 0
    code = coupon.upper()
    if code in EXPIRED_COUPONS:
        raise CouponExpiredError(f"coupon {code} has expired")
    if code not in COUPONS:
        raise HTTPException(422, f"unknown coupon {code}")
    return subtotal * COUPONS[code] // 100


@stm.trace(op="function", description="tax lookup")
async def tax_for(amount: int) -> int:
    """Tax in cents (pretends to ask a tax service)."""
    await asyncio.sleep(0.005)
    return round(amount * TAX_RATE)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/prices")
async def prices() -> dict[str, int]:
    return PRICES


@app.post("/quote")
async def quote(request: QuoteRequest) -> dict[str, object]:
    subtotal = await price_lines(request.items)
    discount = await apply_coupon(request.coupon, subtotal)
    tax = await tax_for(subtotal - discount)
    return {
        "cart_id": request.cart_id,
        "currency": "EUR",
        "lines": [
            {"sku": line.sku, "quantity": line.quantity, "unit_price": PRICES[line.sku]}
            for line in request.items
        ],
        "subtotal": subtotal,
        "discount": discount,
        "tax": tax,
        "total": subtotal - discount + tax,
    }
