"""The tamper-evident audit log: one event per request and per admin action.

``model`` holds the values, ``chain`` the hash chain and its check, ``signing`` the signed
checkpoints, ``ports`` the store port (with an in-memory adapter), ``verify`` the whole-log check,
``log`` the non-blocking writer the request path uses, and ``export`` the JSONL/CSV encodings.
"""
