"""Resolving a client's settings from its arguments and the environment, once, at construction.

Precedence: explicit arguments, then ``AUTOGLM_API_KEY`` / ``AUTOGLM_BASE_URL``, then the default
``http://127.0.0.1:8000``. An explicit ``region`` beats ``AUTOGLM_BASE_URL``; an explicit
``base_url`` together with ``region`` is refused. Invariant of :class:`ClientConfig`:
``base_url`` is an http(s) root without a trailing slash or ``/v1``, so ``base_url + "/v1/..."``
is always the right address.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from openautoglm.sdk.errors import ConfigurationError
from openautoglm.sdk.regions import resolve_region

API_KEY_ENV = "AUTOGLM_API_KEY"
BASE_URL_ENV = "AUTOGLM_BASE_URL"
DEFAULT_BASE_URL = "http://127.0.0.1:8000"


def sdk_version() -> str:
    """The installed ``openautoglm`` version, or ``0.0.0`` when running from a source tree."""
    try:
        return importlib.metadata.version("openautoglm")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def normalize_base_url(url: str) -> str:
    """``https://h/v1/`` and ``https://h`` both become ``https://h``; only http(s) is accepted."""
    root = url.strip().rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    parts = urlsplit(root)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"base URL must be an http(s) URL with a host, got {url!r}")
    return root


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything a client needs to address the server, fixed for the client's lifetime."""

    base_url: str
    api_key: str | None = field(repr=False)
    timeout_s: float
    max_retries: int
    user_agent: str

    def url(self, path: str) -> str:
        """The absolute URL of an API path such as ``/v1/generate``."""
        return self.base_url + path

    def headers(self, *, is_stream: bool) -> dict[str, str]:
        """Headers sent with every request."""
        headers = {
            "User-Agent": self.user_agent,
            "Accept": "text/event-stream" if is_stream else "application/json",
        }
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


def resolve_config(
    *,
    api_key: str | None,
    base_url: str | None,
    region: str | None,
    regions_file: str | os.PathLike[str] | None,
    timeout_s: float,
    max_retries: int,
    environ: Mapping[str, str],
) -> ClientConfig:
    """Validate the arguments and fill the gaps from ``environ`` (see module doc)."""
    if base_url is not None and region is not None:
        raise ConfigurationError("give either base_url or region, not both")
    if timeout_s <= 0:
        raise ConfigurationError(f"timeout_s must be positive, got {timeout_s}")
    if max_retries < 0:
        raise ConfigurationError(f"max_retries must be >= 0, got {max_retries}")
    if region is not None:
        raw_url = resolve_region(region, environ, regions_file)
    else:
        raw_url = base_url or environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    return ClientConfig(
        base_url=normalize_base_url(raw_url),
        api_key=api_key or environ.get(API_KEY_ENV) or None,
        timeout_s=timeout_s,
        max_retries=max_retries,
        user_agent=f"openautoglm-sdk/{sdk_version()}",
    )
