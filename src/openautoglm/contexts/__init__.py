"""Conversation contexts: sessions with history per tenant, and fitting history into a window."""
