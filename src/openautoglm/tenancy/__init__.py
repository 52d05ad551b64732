"""Tenants, API keys, roles, and turning a presented key into a principal."""
