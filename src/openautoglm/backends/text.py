"""Text helpers shared by backends: rough token counting and word-level splitting."""

from __future__ import annotations

import re

from openautoglm.core.types import GenerationRequest

# A CJK character is roughly one token; a Latin word is roughly one token.
_PIECE = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\s\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+\s*|\s+"
)


def split_words(text: str) -> list[str]:
    """Split into stream pieces: a Latin word with its trailing space, or one CJK character."""
    return _PIECE.findall(text)


def count_tokens(text: str) -> int:
    """A cheap, deterministic token estimate (words plus CJK characters)."""
    return sum(1 for piece in split_words(text) if not piece.isspace())


def prompt_text(request: GenerationRequest) -> str:
    """The whole prompt as text: the completion prompt, or every message's text."""
    if request.kind == "completion":
        return request.prompt
    return "\n".join(message.text for message in request.messages)


def last_user_text(request: GenerationRequest) -> str:
    """What the user said last (the completion prompt for completions)."""
    if request.kind == "completion":
        return request.prompt
    for message in reversed(request.messages):
        if message.role == "user":
            return message.text
    return ""
