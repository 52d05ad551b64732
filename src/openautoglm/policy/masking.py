"""PII masking of whole texts, for what the audit log keeps in ``masked`` content mode."""

from __future__ import annotations

from functools import cache

from openautoglm.policy.recognizers import default_recognizers
from openautoglm.policy.scanner import Guard, PiiDetector


@cache
def _pii_guard() -> Guard:
    return Guard(
        [PiiDetector("pii", recognizer, "mask") for recognizer in default_recognizers().values()]
    )


def mask_pii(text: str) -> str:
    """``text`` with every recognised PII value masked (``138****5678``)."""
    return _pii_guard().apply(text).text if text else text
