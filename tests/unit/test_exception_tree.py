"""Every exception relmon defines is a RelmonError, and relmon/errors.py's docstring lists it.

Read from the source (``ast``), not by importing: importing every module would pull in torch,
streamlit pages and Faust. A base class is found by its name through the module's own classes
and imports; third-party bases are imported to check them.
"""

from __future__ import annotations

import ast
import builtins
import importlib
from functools import cache
from pathlib import Path

import relmon.errors

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("relmon", "streams", "scoring", "schemas", "dashboards")

# Test fakes that mimic a third-party client's error by its name, so that the adapters'
# translation (relmon.errors.broker_error matches such names) is tested as it runs on the real
# error. They stand for errors relmon does not define, so they cannot be RelmonErrors.
OUTSIDE_THE_TREE = {"streams.testing.MessageSizeTooLargeError"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, ast.Module]:
    return {
        module_name(path): ast.parse(path.read_text(), str(path))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


@cache
def imports(module: str) -> dict[str, str]:
    """Local name -> dotted target, of a module's ``import`` and ``from ... import`` statements."""
    out: dict[str, str] = {}
    for node in ast.walk(modules()[module]):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                out[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:  # `import a.b` binds a; `import a.b as c` binds c to a.b
                if alias.asname:
                    out[alias.asname] = alias.name
                else:
                    out[alias.name.split(".")[0]] = alias.name.split(".")[0]
    return out


def classes(module: str) -> dict[str, list[str]]:
    """Top-level classes of ``module`` and their bases' names as written."""
    return {
        node.name: [ast.unparse(base) for base in node.bases]
        for node in modules()[module].body
        if isinstance(node, ast.ClassDef)
    }


@cache
def ancestry(module: str, name: str) -> tuple[str, ...]:
    """Qualified names of the class ``name`` as seen from ``module``, and of all its ancestors."""
    head, _, rest = name.partition(".")
    if not rest and name in classes(module):
        bases = classes(module)[name]
        return (f"{module}.{name}", *(a for base in bases for a in ancestry(module, base)))
    target = imports(module).get(head)
    if target is not None:
        dotted = f"{target}.{rest}" if rest else target
        owner, _, attr = dotted.rpartition(".")
        if owner in modules():
            return ancestry(owner, attr)
        return tuple(f"{c.__module__}.{c.__qualname__}" for c in _third_party(owner, attr))
    builtin = getattr(builtins, name, None)
    if isinstance(builtin, type):
        return tuple(f"builtins.{c.__qualname__}" for c in builtin.__mro__)
    return (f"?{module}.{name}",)


def _third_party(owner: str, attr: str) -> tuple[type, ...]:
    found = getattr(importlib.import_module(owner), attr, None)
    return found.__mro__ if isinstance(found, type) else ()


def exceptions() -> dict[str, tuple[str, ...]]:
    """Every exception class defined in the packages, by qualified name, with its ancestors."""
    out = {}
    for module in modules():
        for name in classes(module):
            chain = ancestry(module, name)
            if "builtins.BaseException" in chain:
                out[chain[0]] = chain
    return out


def test_every_exception_relmon_defines_is_a_relmon_error() -> None:
    found = exceptions()
    # the walk does find them (a broken resolver would pass vacuously)
    assert {
        "relmon.errors.ServiceError",
        "relmon.store.protocol.StoreError",
        "relmon.teacher.client.TeacherUnavailable",
        "scoring.training.publish.ModelRejectedError",
        "streams.testing.MessageSizeTooLargeError",
    } <= set(found)
    outside = {
        name
        for name, chain in found.items()
        if "relmon.errors.RelmonError" not in chain and name not in OUTSIDE_THE_TREE
    }
    assert not outside, f"not RelmonErrors: {sorted(outside)} (see relmon/errors.py)"


def test_the_tree_in_relmon_errors_names_every_relmon_error() -> None:
    doc = relmon.errors.__doc__ or ""
    tree = doc[doc.index("Tree") :]
    names = {name.rpartition(".")[2] for name in exceptions() if name not in OUTSIDE_THE_TREE}
    missing = {name for name in names if f" {name} " not in tree}
    assert not missing, f"relmon/errors.py's docstring does not list {sorted(missing)}"


def test_outside_the_tree_are_only_fakes() -> None:
    assert all(name.startswith("streams.testing.") for name in OUTSIDE_THE_TREE)
