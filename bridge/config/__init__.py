"""Bridge configuration: one recceiver.conf-style INI file plus environment overrides.

`load_config` is the only reader: it parses once into the frozen dataclasses
`BridgeConfig`, `Limits`, `EtcdConfig` and `HttpConfig` (`bridge.config.model`), whose
field defaults *are* the defaults. Nothing else in the bridge reads the file or the
``RECCEIVER_*`` environment. Key names, defaults and the override scheme follow the
reference RecCeiver, so an existing ``[recceiver]`` section keeps working; ``[etcd]``,
``[http]`` and the hostile-input limits are ours. What is set but not used gets one
`Note` each, with the closest known name or what the bridge does instead.

The package: `model` (the values), `values` (converters of one key's text), `keys` (the
table of keys), `load` (reading and notes), `text` (the example file, the effective
configuration).
"""

from bridge.config.keys import KNOWN_KEYS
from bridge.config.load import load_config
from bridge.config.model import (
    DEFAULT_PROCS,
    ENV_PREFIX,
    BridgeConfig,
    EtcdConfig,
    HttpConfig,
    Limits,
    Note,
    default_data_dir,
)
from bridge.config.text import effective_config, example_config

__all__ = [
    "DEFAULT_PROCS",
    "ENV_PREFIX",
    "KNOWN_KEYS",
    "BridgeConfig",
    "EtcdConfig",
    "HttpConfig",
    "Limits",
    "Note",
    "default_data_dir",
    "effective_config",
    "example_config",
    "load_config",
]
