"""The box's one typed configuration.

Every part of the appliance reads a frozen `Config`: the settings table (settings.py), checked and
described by one engine (schema.py), read from its sources in order (sources.py).
"""

from .schema import ConfigError, json_schema, to_dict
from .settings import (DEFAULT_LAN, BackupConfig, Config, DeviceConfig, FirewallConfig, GovernorConfig,
                       InferenceConfig, ServerConfig, UpdateConfig, default_threads, timezones)
from .sources import (FIREWALL_SETTINGS, SYSTEM_CONFIG, Live, check_firewall, check_owner, load, parse,
                      read_firewall, read_yaml, reference, save_owner)

__all__ = ["DEFAULT_LAN", "BackupConfig", "FIREWALL_SETTINGS", "SYSTEM_CONFIG", "Config", "ConfigError",
           "DeviceConfig", "FirewallConfig", "GovernorConfig", "InferenceConfig", "Live", "ServerConfig",
           "UpdateConfig", "check_firewall", "check_owner", "default_threads", "json_schema", "load", "parse",
           "read_firewall", "read_yaml", "reference", "save_owner", "timezones", "to_dict"]
