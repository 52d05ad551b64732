"""Inference backends behind one protocol (``backends.base.Backend``)."""
