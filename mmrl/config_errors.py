"""ConfigError: a configuration value the library cannot run with.

Every message names the config key, its value, and the fix, e.g.
`config.mesh.data=3 does not divide the 8 devices; choose a divisor of 8 or -1 to fill in`.
"""
from __future__ import annotations


class ConfigError(ValueError):
  """A bad configuration value; the message names the key, the value and the fix."""
