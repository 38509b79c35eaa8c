"""The storefront: Flask, renders a checkout by calling pricing and inventory (see README.md)."""
