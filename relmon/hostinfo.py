"""What machine a figure was measured on: the CPU model and the ISA extensions that matter.

Every benchmark prints these beside its figures (``cpu``, ``isa``), and ``relmon doctor`` shows
them: the same model scores at very different speeds with and without AVX-512 / VNNI, so a
figure without its CPU says little.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["cpu_model", "host", "isa_flags"]

_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
)


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    for line in _cpuinfo().splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def isa_flags() -> list[str]:
    """The relevant SIMD extensions this CPU reports (empty where unknown)."""
    for line in _cpuinfo().splitlines():
        if line.lower().startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [f for f in _FLAGS if f in have]
    return []


def host() -> dict[str, object]:
    """A bench's machine fields: ``cpu``, ``isa`` and ``cores``."""
    return {"cpu": cpu_model(), "isa": isa_flags(), "cores": os.cpu_count()}
