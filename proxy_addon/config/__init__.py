"""Configuration: the model (:mod:`.model`) and its loader (:mod:`.load`); the first room of
the data flow, read by every other."""

from .load import load_config, parse_config
from .model import (
    AccountConfig,
    ClientConfig,
    Config,
    ConfigError,
    EmulatorConfig,
    EventsConfig,
    HostPort,
    ProxyConfig,
    RateLimitConfig,
    Secret,
    StoreConfig,
)

__all__ = ["AccountConfig", "ClientConfig", "Config", "ConfigError", "EmulatorConfig",
           "EventsConfig", "HostPort", "ProxyConfig", "RateLimitConfig", "Secret",
           "StoreConfig", "load_config", "parse_config"]
