"""The inventory service: Django + SQLite, reserves stock for a cart (see README.md)."""
