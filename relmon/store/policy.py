"""What the store refuses, and its password: pure helpers, no chdb and no sockets.

The store is reachable by anything that can open a socket on its port, a browser page included
(DNS rebinding, cross-site requests). Its defences, each applied by the HTTP front or the engine:

- a password on every query: generated at first start (:func:`load_or_create_password`) unless
  one is configured;
- requests must name a loopback host (``Host``) and, from a browser, come from a loopback page
  (``Origin``): :func:`host_allowed`, :func:`origin_allowed`;
- nothing that reaches files, URLs, other servers or programs: table functions and engines
  outside :data:`ALLOWED_SOURCES`, dictionaries, ``SYSTEM``, ``BACKUP``/``RESTORE``, ``ATTACH``,
  ``INFILE``/``OUTFILE``, format settings that name files, and expressions inside ``Values``
  data (:func:`text_refusal`, :func:`setting_refusal`, :func:`ast_refusal`,
  :data:`FORCED_SETTINGS`);
- one statement per request (checked by the engine with ClickHouse's own parser).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "ALLOWED_SOURCES",
    "FORCED_SETTINGS",
    "ast_refusal",
    "denied_sources",
    "host_allowed",
    "load_or_create_password",
    "origin_allowed",
    "setting_refusal",
    "text_refusal",
]

# Table functions and table engines (lower case) that only read or write the store's own
# tables or generate data. Every other one the engine knows is refused.
ALLOWED_SOURCES = frozenset(
    {
        # table functions
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "generate_series",
        "generateseries",
        "primes",
        "values",
        "sqlstandardvalues",
        "null",
        "view",
        "viewifpermitted",
        "merge",
        "generaterandom",
        "format",
        "loop",
        "fuzzjson",
        "fuzzquery",
        "mergetreeindex",
        "mergetreeprojection",
        "mergetreeanalyzeindexes",
        "mergetreeanalyzeindexesuuid",
        "mergetreecodecblockcounts",
        "mergetreetextindex",
        # table engines
        "mergetree",
        "replacingmergetree",
        "summingmergetree",
        "aggregatingmergetree",
        "collapsingmergetree",
        "versionedcollapsingmergetree",
        "graphitemergetree",
        "coalescingmergetree",
        "memory",
        "log",
        "tinylog",
        "stripelog",
        "set",
        "join",
        "buffer",
        "materializedview",
        "embeddedrocksdb",
        "alias",
    }
)
# Refused although not (only) a table function or engine: ``file()`` also exists as a scalar
# function; ``input()`` reads the request body, which the store does not stream to queries.
_ALWAYS_DENIED = frozenset({"file", "input", "catboostevaluate"})

# Settings that name files the engine would read or write, change the SQL dialect (so the
# store's checks would parse another language than the engine runs), or let Values data run
# expressions. Refused in URLs and in the SQL text alike.
_DENIED_SETTINGS_RE = re.compile(
    r"\b(dialect|format_template_\w*|format_schema\w*|output_format_schema\w*"
    r"|input_format_values_interpret_expressions"
    r"|input_format_values_deduce_templates_of_expressions)\b",
    re.IGNORECASE,
)
_FILE_KEYWORDS_RE = re.compile(r"\b(INFILE|OUTFILE)\b", re.IGNORECASE)

# Applied to every request's engine handle after its own settings.
FORCED_SETTINGS = {
    "input_format_values_interpret_expressions": "0",
    "input_format_values_deduce_templates_of_expressions": "0",
}

_AST_FUNCTION_RE = re.compile(r"^\s*(?:Function|FunctionWithKeyValueArguments)\s+(\S+)", re.M)
_AST_DENIED_NODES = (
    ("SYSTEM query", "SYSTEM queries"),
    ("BackupQuery", "BACKUP and RESTORE"),
    ("AttachQuery", "ATTACH"),
)
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def denied_sources(names: Iterable[str]) -> frozenset[str]:
    """Lower-cased names of ``names`` (the engine's table functions and engines) to refuse."""
    return frozenset(name.lower() for name in names) - ALLOWED_SOURCES | _ALWAYS_DENIED


def text_refusal(sql: str) -> str | None:
    """Why the SQL text is refused before it is parsed (None if it is not).

    Words are matched anywhere, string literals included: a false refusal is harmless, a
    tokeniser that disagreed with ClickHouse's about where a string ends would not be.
    """
    found = _FILE_KEYWORDS_RE.search(sql)
    if found:
        return f"{found.group(1).upper()} (reading or writing the store machine's files)"
    found = _DENIED_SETTINGS_RE.search(sql)
    if found:
        return f"the setting {found.group(1)}"
    return None


def setting_refusal(name: str, value: str) -> str | None:
    """Why a setting given as a URL parameter is refused (None if it is not)."""
    if name.lower() == "dialect" and value.lower() == "clickhouse":
        return None
    if _DENIED_SETTINGS_RE.fullmatch(name):
        return f"the setting {name}"
    return None


def ast_refusal(ast: str, denied: frozenset[str]) -> str | None:
    """Why a statement is refused, from its ``EXPLAIN AST`` text (None if it is not)."""
    first = ast.lstrip().split("\n", 1)[0]
    for node, what in _AST_DENIED_NODES:
        if first.startswith(node):
            return what
    if "Dictionary definition" in ast:
        return "dictionaries (their sources reach files, URLs and other servers)"
    for name in _AST_FUNCTION_RE.findall(ast):
        if name.lower() in denied:
            return f"{name}()"
    return None


def _host_of(authority: str) -> str:
    """The host of ``host[:port]`` or ``[v6][:port]``, lower case, without a trailing dot."""
    authority = authority.strip()
    if authority.startswith("["):
        host = authority[1 : authority.find("]")] if "]" in authority else authority[1:]
    elif authority.count(":") == 1:
        host = authority.split(":", 1)[0]
    else:
        host = authority
    return host.lower().rstrip(".")


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(host_header: str | None, bind_host: str) -> bool:
    """Whether a request's ``Host`` names the store as a loopback or its own listen address.

    A page served from another name that resolves to this machine (DNS rebinding) carries that
    name. A request without ``Host`` (HTTP/1.0) is allowed: no browser sends one.
    """
    if not host_header:
        return True
    host = _host_of(host_header)
    if _is_loopback(host) or host == _host_of(bind_host):
        return True
    try:  # listening on every address: a literal IP cannot be a rebound DNS name
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return _host_of(bind_host) in ("0.0.0.0", "::", "")


def origin_allowed(origin: str | None) -> bool:
    """Whether a request's ``Origin`` (sent by browsers) is a page on this machine's loopback."""
    if origin is None:
        return True
    parts = urlsplit(origin.strip())
    return parts.scheme in ("http", "https") and _is_loopback(_host_of(parts.netloc))


def load_or_create_password(path: Path) -> str:
    """The password stored in ``path``; created (random, mode 0600) if the file is missing.

    Creation is atomic: the file appears complete or not at all, and of two stores starting
    at once, one creates it and the other reads it. An empty file is replaced.
    """
    existing = _read_password(path)
    if existing:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(password + "\n")
        if path.exists():  # empty when read above, or written since by a racing store
            current = _read_password(path)
            if current:
                return current
            os.replace(tmp, path)
            return password
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_password(path) or password
    finally:
        tmp.unlink(missing_ok=True)
    return password


def _read_password(path: Path) -> str:
    """The stripped content of ``path`` ("" if missing), tightening loose permissions to 0600."""
    try:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""
