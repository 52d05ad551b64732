"""Region names to base URLs, e.g. ``cn-north-1`` -> ``https://cn-north-1.example``.

Where the table comes from: an explicit ``regions_file`` alone, when given; otherwise the file named
by ``AUTOGLM_REGIONS_FILE`` overlaid with the inline ``AUTOGLM_REGIONS``
(``cn-north-1=https://a.example,cn-east-2=https://b.example``), inline entries winning. A regions
file is a YAML or JSON mapping of region name to URL. Lookup never guesses: an unknown name is a
:class:`ConfigurationError` that lists the known ones.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from openautoglm.sdk.errors import ConfigurationError

REGIONS_ENV = "AUTOGLM_REGIONS"
REGIONS_FILE_ENV = "AUTOGLM_REGIONS_FILE"


def parse_regions(spec: str) -> dict[str, str]:
    """Parse ``name=url,name=url``; blank entries are skipped, malformed ones refused."""
    regions: dict[str, str] = {}
    for entry in spec.split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, url = entry.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise ConfigurationError(
                f"bad {REGIONS_ENV} entry {entry!r}: expected name=url, e.g. cn-north-1=https://…"
            )
        regions[name.strip()] = url.strip()
    return regions


def _parse_file_text(path: Path, text: str) -> object:
    if path.suffix.lower() == ".json":
        return json.loads(text)
    try:
        # Looked up at run time: PyYAML ships no type stubs, and only YAML files need it.
        yaml = importlib.import_module("yaml")
    except ImportError:
        return json.loads(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc)) from exc


def load_regions_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a YAML or JSON mapping of region name to base URL."""
    file_path = Path(path)
    try:
        data = _parse_file_text(file_path, file_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"cannot read regions file {file_path}: {exc}") from exc
    except ValueError as exc:
        raise ConfigurationError(f"regions file {file_path} is not valid: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(name, str) and isinstance(url, str) for name, url in data.items()
    ):
        raise ConfigurationError(
            f"regions file {file_path} must be a mapping of region name to URL"
        )
    return dict(data)


def known_regions(
    environ: Mapping[str, str], regions_file: str | os.PathLike[str] | None = None
) -> dict[str, str]:
    """The region table from ``regions_file``, or else from the environment (see module doc)."""
    if regions_file is not None:
        return load_regions_file(regions_file)
    regions: dict[str, str] = {}
    env_file = environ.get(REGIONS_FILE_ENV)
    if env_file:
        regions.update(load_regions_file(env_file))
    regions.update(parse_regions(environ.get(REGIONS_ENV, "")))
    return regions


def resolve_region(
    region: str,
    environ: Mapping[str, str],
    regions_file: str | os.PathLike[str] | None = None,
) -> str:
    """The base URL configured for ``region``; unknown regions are refused with the known list."""
    regions = known_regions(environ, regions_file)
    url = regions.get(region)
    if url is None:
        known = ", ".join(sorted(regions)) or "none configured"
        source = (
            f"regions file {regions_file}"
            if regions_file is not None
            else f"{REGIONS_ENV} / {REGIONS_FILE_ENV}"
        )
        raise ConfigurationError(f"unknown region {region!r} (known: {known}; from {source})")
    return url
