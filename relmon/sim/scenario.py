"""Replay scenarios: known true bad-case rates per segment, traffic mix, and rate shifts.

A scenario is JSON (``relmon replay --scenario FILE``), for example::

    {"tier_bad_share": {"head": 0.05, "torso": 0.15, "tail": 0.3},
     "category_bad_share": {"Desks": 0.4},
     "shifts": [{"at_s": 600, "category": "Area Rugs", "bad_share": 0.6}],
     "tier_traffic_weight": {"tail": 2.0}}

The bad share of a page is the first that applies of: the latest shift at or before the page's
time that matches its category and/or tier, the category's share, the tier's share, the base.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from relmon.errors import ConfigError

Share = float


class Shift(BaseModel):
    """From ``at_s`` seconds into the replay, pages matching it have ``bad_share`` bad results."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at_s: float = Field(ge=0)
    bad_share: Share = Field(ge=0, le=1)
    category: str | None = None
    tier: str | None = None

    def matches(self, tier: str, category: str) -> bool:
        """True if the shift applies to a page of this tier and category."""
        return (self.category in (None, category)) and (self.tier in (None, tier))


class Scenario(BaseModel):
    """True bad-case rates and how they change."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_bad_share: Share = Field(default=0.25, ge=0, le=1)
    tier_bad_share: dict[str, Share] = Field(default_factory=dict)
    category_bad_share: dict[str, Share] = Field(default_factory=dict)
    shifts: tuple[Shift, ...] = ()
    tier_traffic_weight: dict[str, float] = Field(
        default_factory=dict,
        description="traffic mix: multiplies the popularity of every query of a tier",
    )

    def bad_share(self, tier: str, category: str, at_s: float) -> float:
        """The true share of irrelevant results on a page at ``at_s``."""
        for shift in sorted(self.shifts, key=lambda s: s.at_s, reverse=True):
            if shift.at_s <= at_s and shift.matches(tier, category):
                return shift.bad_share
        if category in self.category_bad_share:
            return self.category_bad_share[category]
        return self.tier_bad_share.get(tier, self.base_bad_share)

    def explicit_bad_share(self, tier: str, category: str, at_s: float) -> float | None:
        """The share a shift, category or tier entry sets, or ``None`` where only the base would.

        Real-data replays use it: where the scenario says nothing, a page keeps the data's own
        composition (its judged results) instead of ``base_bad_share``.
        """
        if "base_bad_share" in self.model_fields_set:
            return self.bad_share(tier, category, at_s)
        for shift in sorted(self.shifts, key=lambda s: s.at_s, reverse=True):
            if shift.at_s <= at_s and shift.matches(tier, category):
                return shift.bad_share
        if category in self.category_bad_share:
            return self.category_bad_share[category]
        return self.tier_bad_share.get(tier)

    @classmethod
    def load(cls, path: Path) -> Scenario:
        """Read a scenario file; errors name the file and the field."""
        try:
            return cls.model_validate_json(path.read_text())
        except OSError as exc:
            raise ConfigError(f"scenario {path}: {exc}") from None
        except (ValidationError, json.JSONDecodeError) as exc:
            raise ConfigError(f"scenario {path}: {exc}") from None
