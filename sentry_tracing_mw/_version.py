"""Package version (single source of truth for hatch and the SDK identity)."""

VERSION = "0.1.0"
__version__ = VERSION
