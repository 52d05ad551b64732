"""Canary releases: per-version metrics, threshold analysis and the traffic split."""
