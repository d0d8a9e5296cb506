"""The import rule, enforced: contracts <- domain <- adapters <- entry points.

An import-linter-like check over every module of the five packages, read with ``ast`` (imports
inside functions count too: a lazy import is still a dependency). A module may import modules of
its own layer or of a lower one; an import pointing upward fails, unless :data:`ALLOWED` names it
with its reason. The layers (README, "Architecture"):

0. **contracts**: the record types and schemas (``schemas``), ``relmon.errors``,
   ``relmon.settings`` and small pure helpers (``relmon.stats``, ``relmon.hostinfo``);
1. **domain**: what relmon computes, framework-free: the stream processing core (decode, enrich,
   sample, route: ``streams`` but its adapters), scoring (``scoring``), alert detection
   (``relmon.alerts.detect``/``lifecycle``), the rate estimate's sums, SQL and judged cut
   (``relmon.estimate``);
2. **adapters**: what talks to the world: ClickHouse (``relmon.db``, the worker's
   ``streams.storage`` and shared embeddings ``streams.vectors``), Kafka (``relmon.kafka``,
   ``relmon.lag``, the Faust app ``streams.app``), the local store and processes
   (``relmon.store``, ``relmon.runtime``), the worker's Prometheus endpoint
   (``streams.prometheus``), the alert runner (its repository, leader election and loop) and its
   sinks, the teacher (its client, consumer and store), the
   dashboard pages and their reads, and the simulation that drives the system from outside
   (``relmon.sim``: ``synth``, ``replay``, ``scenario``, ``realdata``, ``validation``,
   ``alerts``);
3. **entry points**: ``relmon.cli`` (and ``__main__``), ``relmon.demo``, the chaos run
   ``relmon.sim.chaos`` (it composes workers and the store, as the demo does),
   ``dashboards.app``.

Shared adapters (:data:`SHARED`: the ClickHouse and Kafka clients, the store, processes) are used
by every component, so they may import contracts only: one that imports a component (the worker's
plans, say) makes every other component depend on it.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("relmon", "streams", "scoring", "schemas", "dashboards")
CONTRACTS, DOMAIN, ADAPTERS, ENTRY_POINTS = 0, 1, 2, 3
NAMES = {0: "contracts", 1: "domain", 2: "adapters", 3: "entry points"}

# Package faces, by exact name (their modules are not in their layer).
FACES: dict[str, int] = {"relmon": CONTRACTS, "relmon.alerts": DOMAIN}
# Module (or package prefix) -> layer; the longest matching prefix wins.
LAYERS: dict[str, int] = {
    "schemas": CONTRACTS,
    "relmon.errors": CONTRACTS,
    "relmon.settings": CONTRACTS,
    "relmon.stats": CONTRACTS,
    "relmon.hostinfo": CONTRACTS,
    "streams": DOMAIN,
    "scoring": DOMAIN,
    "relmon.alerts.detect": DOMAIN,
    "relmon.alerts.lifecycle": DOMAIN,
    "relmon.estimate": DOMAIN,
    "streams.app": ADAPTERS,
    "streams.storage": ADAPTERS,
    "streams.vectors": ADAPTERS,
    "streams.repository": ADAPTERS,
    "streams.prometheus": ADAPTERS,
    "relmon.db": ADAPTERS,
    "relmon.kafka": ADAPTERS,
    "relmon.lag": ADAPTERS,
    "relmon.runtime": ADAPTERS,
    "relmon.store": ADAPTERS,
    "relmon.alerts.repository": ADAPTERS,
    "relmon.alerts.leader": ADAPTERS,
    "relmon.alerts.runner": ADAPTERS,
    "relmon.alerts.sinks": ADAPTERS,
    "relmon.teacher": ADAPTERS,
    "relmon.sim": ADAPTERS,
    "dashboards": ADAPTERS,
    "relmon.cli": ENTRY_POINTS,
    "relmon.__main__": ENTRY_POINTS,
    "relmon.demo": ENTRY_POINTS,
    "relmon.sim.chaos": ENTRY_POINTS,
    "dashboards.app": ENTRY_POINTS,
}

# Shared adapters: they may import contracts and each other only.
SHARED = ("relmon.db", "relmon.kafka", "relmon.lag", "relmon.runtime", "relmon.store")

# (importer, imported) -> why the upward arrow is tolerated. Keep it short.
ALLOWED: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def layer(module: str) -> int:
    if module in FACES:
        return FACES[module]
    prefixes = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    assert prefixes, f"{module} has no layer: add it to LAYERS in {__file__}"
    return LAYERS[max(prefixes, key=len)]


def resolve(name: str) -> str:
    """The first-party module ``name`` refers to (a module, or the module defining a name)."""
    while name not in modules():
        name = name.rpartition(".")[0]
    return name


def imports(module: str) -> set[str]:
    """First-party modules ``module`` imports, anywhere in its body."""
    tree = ast.parse(modules()[module].read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        out |= {resolve(t) for t in targets if t.split(".")[0] in PACKAGES}
    out.discard(module)
    return out


def upward_imports() -> dict[tuple[str, str], str]:
    out = {}
    for module in modules():
        for target in imports(module):
            if layer(target) > layer(module):
                out[(module, target)] = f"{NAMES[layer(module)]} -> {NAMES[layer(target)]}"
            elif module.startswith(SHARED) and not (
                target.startswith(SHARED) or layer(target) == CONTRACTS
            ):
                out[(module, target)] = f"shared adapter -> {NAMES[layer(target)]}"
    return out


def test_every_module_has_a_layer() -> None:
    assert len(modules()) > 60
    for module in modules():
        layer(module)


def test_no_import_points_upward() -> None:
    found = upward_imports()
    bad = {arrow: why for arrow, why in found.items() if arrow not in ALLOWED}
    assert not bad, "imports against the layers:\n" + "\n".join(
        f"  {a} imports {b} ({why})" for (a, b), why in sorted(bad.items())
    )


def test_the_allow_list_is_still_needed() -> None:
    stale = set(ALLOWED) - set(upward_imports())
    assert not stale, f"allowed arrows that no longer exist (remove them): {sorted(stale)}"


def test_the_check_sees_an_upward_import() -> None:
    """The checker itself: a contract importing an adapter, and a lazy import, are found."""
    source = "def f():\n    from relmon.db import connect\n"
    tree = ast.parse(source)
    (node,) = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert resolve(f"{node.module}.connect") == "relmon.db"
    assert layer("relmon.db") > layer("schemas.models")
    assert layer("streams.app") == ADAPTERS and layer("streams.processor") == DOMAIN
