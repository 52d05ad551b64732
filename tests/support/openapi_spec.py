"""The official OpenAI OpenAPI document, as JSON Schemas that validate our wire bodies.

The document lives in ``shared/data/openai-openapi/openapi.yaml`` beside the repository clone
(``<repo>/../shared/...``). It declares OpenAPI 3.1 (JSON Schema 2020-12) but still marks ~100
schemas with the 3.0 keyword ``nullable: true``, which 2020-12 ignores; :func:`load_spec` rewrites
each such schema to ``anyOf: [schema, {type: null}]`` so that ``null`` is accepted exactly where
the document means it. ``#/components/schemas/...`` references resolve inside the document through
a ``referencing`` registry, so a component is validated with everything it references.

Invariant: the 3 MB document is parsed once per process (:func:`load_spec` is cached), and a
failed validation raises ``AssertionError`` listing every violation with its JSON path.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_RELATIVE_PATH = Path("shared/data/openai-openapi/openapi.yaml")
SPEC_URI = "urn:openai-openapi"
_MAX_ERRORS_SHOWN = 8


class SpecMissing(LookupError):
    """The OpenAPI document is not where the repository layout puts it."""


def spec_path() -> Path:
    """Where the document is: ``<repo>/../shared/...``, or ``<repo>/shared/...`` in a checkout
    that carries ``shared/`` inside the repository."""
    candidates = [REPO_ROOT.parent / SPEC_RELATIVE_PATH, REPO_ROOT / SPEC_RELATIVE_PATH]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise SpecMissing(
        "OpenAI OpenAPI spec not found; looked at " + ", ".join(str(c) for c in candidates)
    )


_FastSafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available


class _JsonLikeLoader(_FastSafeLoader):  # type: ignore[misc]
    """Safe YAML loading that keeps ``2026-10-23`` a string, as JSON would."""


_JsonLikeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _without_nullable(node: Any) -> Any:
    """A copy of ``node`` with every OpenAPI 3.0 ``nullable: true`` made a 2020-12 ``anyOf``."""
    if isinstance(node, list):
        return [_without_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _without_nullable(value) for key, value in node.items()}
    if converted.pop("nullable", False) is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@functools.lru_cache(maxsize=1)
def load_spec() -> dict[str, Any]:
    """The parsed document with ``nullable`` rewritten (parsed once per process)."""
    path = spec_path()
    with path.open("rb") as handle:
        document = yaml.load(handle, Loader=_JsonLikeLoader)
    version = str(document.get("openapi", ""))
    if not version.startswith("3.1"):
        raise AssertionError(f"{path}: expected an OpenAPI 3.1 document, got {version!r}")
    converted: dict[str, Any] = _without_nullable(document)
    return converted


@functools.lru_cache(maxsize=1)
def _registry() -> Registry[Any]:
    resource: Resource[Any] = DRAFT202012.create_resource(load_spec())
    return Registry().with_resource(SPEC_URI, resource)


def component_schema(name: str) -> dict[str, Any]:
    """The component schema ``name`` (raises ``KeyError`` naming close matches if unknown)."""
    schemas: dict[str, Any] = load_spec()["components"]["schemas"]
    if name not in schemas:
        close = sorted(key for key in schemas if name.lower() in key.lower())[:10]
        raise KeyError(f"no component schema {name!r} in the OpenAI spec; similar: {close}")
    schema: dict[str, Any] = schemas[name]
    return schema


@functools.lru_cache(maxsize=64)
def validator_for(name: str) -> Draft202012Validator:
    """A validator for ``#/components/schemas/<name>`` with the document's refs resolvable."""
    component_schema(name)
    return Draft202012Validator(
        {"$ref": f"{SPEC_URI}#/components/schemas/{name}"}, registry=_registry()
    )


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _completion_stream_chunk(spec: dict[str, Any]) -> dict[str, Any]:
    """``CreateCompletionResponse`` as streamed. The spec says streamed and whole completions
    "share the same shape", but a stream must say "not finished yet": OpenAI sends
    ``finish_reason: null`` on every chunk but the last, and (as for chat chunks, whose schema
    documents it) ``usage: null`` on every chunk but the usage chunk when ``include_usage`` is set.
    Only those two fields are relaxed."""
    schema = copy.deepcopy(spec["components"]["schemas"]["CreateCompletionResponse"])
    choice = schema["properties"]["choices"]["items"]["properties"]
    choice["finish_reason"] = _or_null(choice["finish_reason"])
    schema["properties"]["usage"] = _or_null(schema["properties"]["usage"])
    return schema


DERIVED_SCHEMAS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "CompletionStreamChunk": _completion_stream_chunk,
}


def _absolute_refs(node: Any) -> Any:
    """Point a copied schema's ``#/...`` references back into the spec document."""
    if isinstance(node, list):
        return [_absolute_refs(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: SPEC_URI + value
        if key == "$ref" and isinstance(value, str) and value.startswith("#")
        else _absolute_refs(value)
        for key, value in node.items()
    }


@functools.lru_cache(maxsize=16)
def derived_validator_for(name: str) -> Draft202012Validator:
    """A validator for a schema derived from the spec (see :data:`DERIVED_SCHEMAS`)."""
    schema = _absolute_refs(DERIVED_SCHEMAS[name](load_spec()))
    return Draft202012Validator(schema, registry=_registry())


def violations(name: str, instance: Any, *, derived: bool = False) -> list[ValidationError]:
    """Every way ``instance`` breaks schema ``name``, ordered by where in the instance."""
    validator = derived_validator_for(name) if derived else validator_for(name)
    return sorted(validator.iter_errors(instance), key=lambda e: e.json_path)


def _describe(error: ValidationError, indent: str = "  ") -> list[str]:
    lines = [f"{indent}at {error.json_path}: {_short(error.message)}"]
    if error.context:
        # anyOf/oneOf: show why each branch refused, so the real mismatch is visible.
        for sub in sorted(error.context, key=lambda e: (len(e.path), str(e.path)))[:6]:
            lines.append(f"{indent}  - branch {list(sub.schema_path)[:1]}: {_short(sub.message)}")
    return lines


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + " …"


def assert_valid(name: str, instance: Any, *, what: str = "") -> None:
    """Fail with a readable report if ``instance`` does not match component schema ``name``."""
    _report(f"OpenAI schema {name}", violations(name, instance), instance, what)


def assert_valid_derived(name: str, instance: Any, *, what: str = "") -> None:
    """Like :func:`assert_valid` for a schema of :data:`DERIVED_SCHEMAS`."""
    _report(
        f"schema {name} (derived from the OpenAI spec)",
        violations(name, instance, derived=True),
        instance,
        what,
    )


def _report(schema: str, errors: list[ValidationError], instance: Any, what: str) -> None:
    if not errors:
        return
    label = f" ({what})" if what else ""
    lines = [f"{len(errors)} violation(s) of {schema}{label}:"]
    for error in errors[:_MAX_ERRORS_SHOWN]:
        lines.extend(_describe(error))
    if len(errors) > _MAX_ERRORS_SHOWN:
        lines.append(f"  … and {len(errors) - _MAX_ERRORS_SHOWN} more")
    lines.append("instance: " + _short(json.dumps(instance, default=str), 1500))
    raise AssertionError("\n".join(lines))
