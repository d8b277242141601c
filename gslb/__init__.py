"""gslb-edge: the `gslb` command and the one TOML layer under every loader.

This package owns the command line (`gslb.cli`) and the TOML layer
(`gslb.toml`: reading, line numbers, typed getters, `ConfigError`), which
imports no component so every component may use it. Schemas belong to their
components (`dns/config.py`, `edge/config.py`, `edge/agent/config.py`,
`netns/plan.py`, `geo/table.py`). It must not own protocol logic: that lives
in `dns/`, `geo/`, `edge/` and `netns/`.
"""

__version__ = "0.1.0"
