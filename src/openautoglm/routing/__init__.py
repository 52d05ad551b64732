"""Model names, their instances, and choosing an instance for a request."""
