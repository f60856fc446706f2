"""`TnotConfig` is defined with the other typed settings in `tjdkit.config` (shared ground, so
recipes hold it without importing TNOT); this name keeps `tjdkit.tnot.config.TnotConfig` working."""

from tjdkit.config import TnotConfig

__all__ = ["TnotConfig"]
