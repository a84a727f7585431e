"""The box's one typed configuration.

Every part of the appliance reads a frozen `Config`: the settings table (settings.py), checked and
described by one engine (schema.py), read from its sources in order (sources.py).
"""

from .schema import ConfigError, json_schema, to_dict
from .settings import (DEFAULT_LAN, Config, DeviceConfig, FirewallConfig, GovernorConfig, InferenceConfig,
                       ServerConfig, UpdateConfig, default_threads, timezones)
from .sources import (FIREWALL_SETTINGS, SYSTEM_CONFIG, Live, check_firewall, load, parse,
                      read_firewall, reference, save_owner)

__all__ = ["DEFAULT_LAN", "FIREWALL_SETTINGS", "SYSTEM_CONFIG", "Config", "ConfigError",
           "DeviceConfig", "FirewallConfig", "GovernorConfig", "InferenceConfig", "Live", "ServerConfig",
           "UpdateConfig", "check_firewall", "default_threads", "json_schema", "load", "parse", "read_firewall",
           "reference", "save_owner", "timezones", "to_dict"]
