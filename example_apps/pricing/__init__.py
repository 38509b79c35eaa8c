"""The pricing service: FastAPI (async), quotes a cart with coupons and tax (see README.md)."""
