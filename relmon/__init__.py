"""relmon: a streaming, real-time monitor of e-commerce search relevance."""

from relmon.errors import ConfigError, RelmonError
from relmon.settings import Settings, get_settings, load_settings

__all__ = ["ConfigError", "RelmonError", "Settings", "get_settings", "load_settings"]
__version__ = "0.1.0"
