"""gslb-edge: the `gslb` command.

This package owns the command line (`gslb.cli`). The one TOML layer under every
loader (reading, line numbers, typed getters, `ConfigError`) is `plumbing.toml`,
in the leaf package every component may import. Schemas belong to their
components (`dns/config.py`, `edge/config.py`, `edge/agent/config.py`,
`netns/plan.py`, `geo/table.py`). It must not own protocol logic: that lives
in `dns/`, `geo/`, `edge/` and `netns/`.
"""

__version__ = "0.1.0"
