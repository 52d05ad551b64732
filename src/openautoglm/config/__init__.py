"""Settings: one YAML file plus ``AUTOGLM_*`` environment variables, read once and passed down."""

from openautoglm.config.settings import (
    InstanceConfig,
    ModelConfig,
    ServerSettings,
    Settings,
    load_settings,
)

__all__ = ["InstanceConfig", "ModelConfig", "ServerSettings", "Settings", "load_settings"]
