"""Hostile-input corpus and helpers shared by the hardening tests."""
