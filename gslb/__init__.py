"""gslb-edge: the `gslb` command and the one configuration loader.

This package owns the command line (`gslb.cli`) and the configuration loader
(`gslb.config`: TOML via tomllib into frozen dataclasses). It must not own
protocol logic: that lives in `dns/`, `geo/`, `edge/` and `netns/`.
"""

__version__ = "0.1.0"
