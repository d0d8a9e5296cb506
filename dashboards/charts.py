"""Time axes of the dashboard's charts: 24-hour UTC, whatever the browser's time zone.

Vega-Lite's default time labels are a 12-hour clock without AM/PM at minute resolution ("07:06"
at 19:06) in the *browser's* zone, while every window relmon stores is UTC. Each temporal
encoding goes through here instead: a UTC scale (ticks on UTC boundaries) and an explicit
24-hour format applied in UTC.
"""

from __future__ import annotations

import altair as alt

__all__ = ["time_format", "utc_time_tooltip", "utc_time_x"]


def time_format(minutes: int) -> str:
    """Label format for a range of ``minutes``: hours and minutes, with the day past a day."""
    return "%H:%M" if minutes <= 1440 else "%d %b %H:%M"


def utc_time_x(field: str, title: str, minutes: int) -> alt.X:
    """An x encoding of a UTC timestamp column, labelled on a 24-hour UTC clock."""
    return alt.X(
        f"{field}:T",
        title=title,
        scale=alt.Scale(type="utc"),
        axis=alt.Axis(format=time_format(minutes), formatType="utc", labelOverlap=True),
    )


def utc_time_tooltip(field: str, title: str) -> alt.Tooltip:
    """A tooltip showing a UTC timestamp in full, 24-hour clock."""
    return alt.Tooltip(f"{field}:T", title=title, format="%Y-%m-%d %H:%M UTC", formatType="utc")
