"""Settings: YAML, environment overrides, ${VAR} expansion, and readable errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from openautoglm.config.settings import ConfigError, ModelConfig, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "autoglm.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_in_the_documented_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZHIPU_API_KEY", "zk-123")
    path = write(
        tmp_path,
        """
server: {host: 0.0.0.0, port: 9000, workers: 1}
database_url: sqlite+aiosqlite:///tmp/x.db
models:
  - name: glm-4
    backend: openai
    base_url: https://open.bigmodel.cn/api/paas/v4
    api_key: ${ZHIPU_API_KEY}
    region: cn-north-1
  - name: echo-pool
    backend: echo
    instances:
      - {name: a}
      - {name: b, weight: 3}
      - {name: c, fail_rate: 0.2, latency_ms: 50}
""",
    )
    settings = load_settings(path, environ={"ZHIPU_API_KEY": "zk-123"})
    assert settings.server.port == 9000 and settings.server.host == "0.0.0.0"
    glm = settings.models[0]
    assert glm.api_key == "zk-123" and glm.region == "cn-north-1"
    instances = settings.models[1].resolved_instances()
    assert [(i.name, i.weight, i.fail_rate, i.backend) for i in instances] == [
        ("a", 1.0, 0.0, "echo"),
        ("b", 3.0, 0.0, "echo"),
        ("c", 1.0, 0.2, "echo"),
    ]


def test_environment_wins_over_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "server: {port: 9000}\nlog_level: debug\n")
    monkeypatch.setenv("AUTOGLM_SERVER__PORT", "9100")
    monkeypatch.setenv("AUTOGLM_DATABASE_URL", "postgresql+asyncpg://db/x")
    settings = load_settings(path)
    assert settings.server.port == 9100
    assert settings.log_level == "debug"
    assert settings.resolved_database_url == "postgresql+asyncpg://db/x"


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOGLM_CONFIG", str(write(tmp_path, "default_model: echo\n")))
    assert load_settings().default_model == "echo"


def test_default_database_is_sqlite_in_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOGLM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("AUTOGLM_DATABASE_URL", raising=False)
    assert load_settings().resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'autoglm.db'}"


def test_env_reference_defaults_and_missing(tmp_path: Path) -> None:
    path = write(tmp_path, "redis_url: ${REDIS:-redis://127.0.0.1:6379/0}\n")
    assert load_settings(path, environ={}).redis_url == "redis://127.0.0.1:6379/0"
    missing = write(
        tmp_path, "models: [{name: m, backend: openai, base_url: x, api_key: '${NOPE}'}]\n"
    )
    with pytest.raises(ConfigError, match="NOPE"):
        load_settings(missing, environ={})


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("models: [{name: m, backend: warp}]", "models.0.backend"),
        ("models: [{name: m, backend: openai}]", "needs base_url"),
        ("models: [{name: m, backend: echo, wieght: 2}]", "wieght"),
        ("models: [{name: m, backend: echo}, {name: m, backend: echo}]", "repeated: m"),
        ("server: {port: 99999}", "server.port"),
        ("- just a list", "mapping"),
        ("models: [unclosed", "not valid YAML"),
    ],
)
def test_invalid_config_says_where(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_settings(write(tmp_path, text), environ={})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml")


def test_instances_inherit_model_keys_but_may_override() -> None:
    model = ModelConfig(
        name="pool",
        backend="openai",
        base_url="http://a/v1",
        timeout_s=5,
        instances=[{"name": "x"}, {"name": "y", "base_url": "http://b/v1"}],  # type: ignore[list-item]
    )
    x, y = model.resolved_instances()
    assert (x.base_url, x.timeout_s) == ("http://a/v1", 5)
    assert (y.base_url, y.timeout_s) == ("http://b/v1", 5)


def test_the_readme_failover_example_is_valid_config() -> None:
    import yaml

    from openautoglm.config.settings import ModelConfig

    readme = (Path(__file__).parents[3] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Instances, balancing and failover", 1)[1]
    document = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    (model,) = (ModelConfig.model_validate(entry) for entry in document["models"])
    assert model.balancer == "p2c_ewma" and model.fallbacks == ["qwen-72b", "echo-apology"]
    assert [i.name for i in model.resolved_instances()] == ["bj-1", "sh-1"]
    assert model.resolved_instances()[0].weight == 2
