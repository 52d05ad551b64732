"""Client configuration: precedence of arguments and environment, base URLs, regions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from openautoglm.sdk import ConfigurationError, GLMClient
from openautoglm.sdk.config import ClientConfig, normalize_base_url, resolve_config
from openautoglm.sdk.regions import parse_regions, resolve_region


def resolve(environ: dict[str, str] | None = None, **kwargs: Any) -> ClientConfig:
    arguments: dict[str, Any] = {
        "api_key": None,
        "base_url": None,
        "region": None,
        "regions_file": None,
        "timeout_s": 60.0,
        "max_retries": 3,
    }
    arguments.update(kwargs)
    return resolve_config(environ=environ or {}, **arguments)


def test_defaults_to_the_local_server_without_a_key() -> None:
    config = resolve()

    assert (config.base_url, config.api_key) == ("http://127.0.0.1:8000", None)
    assert "Authorization" not in config.headers(is_stream=False)


def test_arguments_beat_the_environment() -> None:
    environ = {"AUTOGLM_API_KEY": "sk-agl-env", "AUTOGLM_BASE_URL": "http://env:1/v1"}

    assert resolve(environ).base_url == "http://env:1"
    assert resolve(environ).api_key == "sk-agl-env"
    config = resolve(environ, api_key="sk-agl-arg", base_url="https://arg.example/v1/")
    assert (config.base_url, config.api_key) == ("https://arg.example", "sk-agl-arg")


def test_an_explicit_region_beats_the_base_url_environment_variable() -> None:
    environ = {
        "AUTOGLM_BASE_URL": "http://env:1",
        "AUTOGLM_REGIONS": "cn-north-1=https://a.example",
    }

    assert resolve(environ, region="cn-north-1").base_url == "https://a.example"


def test_the_api_key_is_kept_out_of_the_config_repr() -> None:
    assert "sk-agl-secret" not in repr(resolve(api_key="sk-agl-secret"))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://h:8000", "http://h:8000"),
        ("http://h:8000/", "http://h:8000"),
        ("https://h/v1", "https://h"),
        (" https://h/prefix/v1/ ", "https://h/prefix"),
        ("https://h/v10", "https://h/v10"),
    ],
)
def test_normalize_base_url(url: str, expected: str) -> None:
    assert normalize_base_url(url) == expected


@pytest.mark.parametrize("url", ["ftp://h", "h:8000", "http://", ""])
def test_bad_base_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="http"):
        normalize_base_url(url)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_url": "http://h", "region": "cn-north-1"}, "either base_url or region"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"max_retries": -1}, "max_retries"),
    ],
)
def test_inconsistent_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        resolve(**kwargs)


def test_the_client_refuses_base_url_with_region() -> None:
    with pytest.raises(ValueError, match="either base_url or region"):
        GLMClient(base_url="http://h", region="cn-north-1")


def test_parse_regions() -> None:
    spec = " cn-north-1 = https://a.example , ,cn-east-2=https://b.example?x=1"

    assert parse_regions(spec) == {
        "cn-north-1": "https://a.example",
        "cn-east-2": "https://b.example?x=1",
    }


@pytest.mark.parametrize("spec", ["cn-north-1", "=https://a", "cn-north-1="])
def test_malformed_region_entries_are_refused(spec: str) -> None:
    with pytest.raises(ConfigurationError, match="expected name=url"):
        parse_regions(spec)


def test_unknown_region_lists_the_known_ones() -> None:
    environ = {"AUTOGLM_REGIONS": "cn-north-1=https://a.example,cn-east-2=https://b.example"}

    with pytest.raises(ConfigurationError) as caught:
        resolve_region("us-west-1", environ)

    assert "unknown region 'us-west-1'" in caught.value.message
    assert "known: cn-east-2, cn-north-1" in caught.value.message


def test_unknown_region_with_none_configured_says_so() -> None:
    with pytest.raises(ConfigurationError, match="none configured"):
        resolve_region("cn-north-1", {})


def test_regions_file_yaml_from_the_environment_is_overlaid_by_inline_regions(
    tmp_path: Path,
) -> None:
    regions_file = tmp_path / "regions.yaml"
    regions_file.write_text(
        "cn-north-1: https://file-a.example\ncn-east-2: https://file-b.example\n"
    )
    environ = {
        "AUTOGLM_REGIONS_FILE": str(regions_file),
        "AUTOGLM_REGIONS": "cn-north-1=https://inline-a.example",
    }

    assert resolve_region("cn-north-1", environ) == "https://inline-a.example"
    assert resolve_region("cn-east-2", environ) == "https://file-b.example"


def test_an_explicit_json_regions_file_is_the_only_source(tmp_path: Path) -> None:
    regions_file = tmp_path / "regions.json"
    regions_file.write_text(json.dumps({"cn-north-1": "https://json.example/v1"}))
    environ = {"AUTOGLM_REGIONS": "cn-east-2=https://inline.example"}

    config = resolve(environ, region="cn-north-1", regions_file=regions_file)

    assert config.base_url == "https://json.example"
    with pytest.raises(ConfigurationError, match="known: cn-north-1;"):
        resolve_region("cn-east-2", environ, regions_file)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("r.yaml", "- a\n- b\n", "must be a mapping"),
        ("r.yaml", "a: 1\n", "must be a mapping"),
        ("r.yaml", "a: [unclosed\n", "not valid"),
        ("r.json", "{", "not valid"),
    ],
)
def test_bad_regions_files_are_refused(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    regions_file = tmp_path / name
    regions_file.write_text(content)

    with pytest.raises(ConfigurationError, match=message):
        resolve_region("a", {}, regions_file)


def test_a_missing_regions_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read regions file"):
        resolve_region("a", {"AUTOGLM_REGIONS_FILE": str(tmp_path / "absent.yaml")})
