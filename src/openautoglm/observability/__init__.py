"""Metrics (Prometheus) of the request path and the backends."""
