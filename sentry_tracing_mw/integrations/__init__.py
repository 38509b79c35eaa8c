"""Framework and HTTP-client integrations (each module translates one framework)."""
