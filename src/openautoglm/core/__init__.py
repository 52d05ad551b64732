"""Shared value types, errors and ids. Imports nothing else of ours."""
