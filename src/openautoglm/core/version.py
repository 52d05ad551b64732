"""The package version (one place; the SDK and server both report it)."""

__version__ = "0.1.0"
