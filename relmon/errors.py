"""relmon's exceptions.

Tree::

    RelmonError                  base of everything relmon raises on purpose
    ├── ConfigError              a setting is missing or wrong: the message says what to fix
    ├── DecodeError              an input record cannot be decoded or validated (caller's data)
    ├── ModelNotFoundError       no built model where RELMON_MODEL_DIR points
    └── ServiceError             infrastructure: a broker, store or process failed
        └── StartupTimeout       a service did not become ready in time
"""

from __future__ import annotations


class RelmonError(Exception):
    """Base of all relmon errors."""


class ConfigError(RelmonError):
    """A configuration value is missing or invalid; the message says what to fix."""


class DecodeError(RelmonError):
    """An input record cannot be decoded (kind ``malformed``) or fails validation (``invalid``)."""

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


class ModelNotFoundError(ConfigError):
    """No built model at the configured path."""


class ServiceError(RelmonError):
    """A service relmon depends on failed."""


class StartupTimeout(ServiceError):
    """A service did not become ready within its deadline."""
