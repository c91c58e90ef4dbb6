"""The balance chart: relocations sent and received per city, so an imbalance is seen at a glance.

Owns the picture of a :class:`~node.balance_report.BalanceReport` (``citynode report balance
--chart FILE.png|svg``). Per city, two bars side by side — sent as home city, received as
receiving city — with the numbers on them and the net difference under the city's name; a city
that stated nothing is marked so, not drawn as zero; the pairs whose two cities disagree are
listed under the chart. The picture holds what the report holds: cities, years and counts.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Final

from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from node.balance_report import BalanceReport, CityBalance, PairBalance
from node.pictures import PictureFormat, new_figure, render

SENT_COLOUR: Final = "#1f4e79"
RECEIVED_COLOUR: Final = "#e07b00"
MISSING_COLOUR: Final = "#888888"
BAR_WIDTH: Final = 0.38
MAX_LISTED_DISAGREEMENTS: Final = 6


def balance_chart(
    report: BalanceReport,
    picture_format: PictureFormat,
    *,
    names: Mapping[str, str] | None = None,
) -> bytes:
    """Draw the report's per-city totals as grouped bars.

    Args:
        report: the balance report (one year, or every year summed).
        picture_format: ``png`` or ``svg``.
        names: display names by city id (``Göteborg`` for ``goteborg``); the id otherwise.

    Returns:
        The picture's bytes.
    """
    shown = names or {}
    cities = report.cities
    listed = report.disagreements[:MAX_LISTED_DISAGREEMENTS]
    figure = new_figure(max(6.0, 1.9 * len(cities) + 2.0), 4.8 + 0.22 * len(listed))
    axes = figure.add_subplot()
    _bars(axes, cities, shown)
    axes.set_title(_title(report), fontsize=13, loc="left")
    axes.set_ylabel("relocations (referrals)")
    axes.legend(loc="upper right", frameon=False)
    axes.spines[["top", "right"]].set_visible(False)
    width_chars = int(figure.get_figwidth() * 15)
    footnote = "\n".join(
        textwrap.fill(line, width_chars, subsequent_indent="  ")
        for line in _footnote(report, listed, shown)
    )
    # A figure-level label, so the constrained layout makes room for it under the axes.
    figure.supxlabel(footnote, x=0.01, ha="left", fontsize=8.5, linespacing=1.4)
    return render(figure, picture_format)


def _bars(axes: Axes, cities: list[CityBalance], names: Mapping[str, str]) -> None:
    positions = list(range(len(cities)))
    highest = max([c.sent or 0 for c in cities] + [c.received or 0 for c in cities] + [1])
    for kind, offset, colour in (
        ("sent", -BAR_WIDTH / 2, SENT_COLOUR),
        ("received", BAR_WIDTH / 2, RECEIVED_COLOUR),
    ):
        label = "sent (as home city)" if kind == "sent" else "received (as receiving city)"
        values = [getattr(c, kind) for c in cities]
        xs = [p + offset for p, v in zip(positions, values, strict=True) if v is not None]
        heights = [v for v in values if v is not None]
        bars = axes.bar(xs, heights, BAR_WIDTH, color=colour, label=label)
        axes.bar_label(bars, padding=2, fontsize=11, fontweight="bold")
    for position, city in zip(positions, cities, strict=True):
        if city.source == "none":
            axes.text(
                position, highest * 0.05, "no statement", ha="center", color=MISSING_COLOUR,
                fontstyle="italic",
            )  # fmt: skip
    axes.set_xticks(positions, [_tick(c, names) for c in cities])
    axes.set_ylim(0, highest * 1.25 + 0.5)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))


def _tick(city: CityBalance, names: Mapping[str, str]) -> str:
    name = names.get(city.city, city.city)
    if city.sent is None or city.received is None:
        return name
    net = city.sent - city.received
    if net == 0:
        return f"{name}\nbalanced"
    return f"{name}\nsent {abs(net)} {'more' if net > 0 else 'fewer'} than received"


def _title(report: BalanceReport) -> str:
    years = report.years
    span = str(years[0]) if len(years) == 1 else f"{years[0]}\u2013{years[-1]}"
    return f"Relocations between the cities, {span}"


def _footnote(
    report: BalanceReport, listed: list[PairBalance], names: Mapping[str, str]
) -> list[str]:
    own = names.get(report.city, report.city)
    lines = [
        f"Each city's own count: {own} from its cases, the others from their signed statements "
        f"(report of {report.as_of.isoformat()}, made at {own})."
    ]
    for city in report.cities:
        if city.missing_years and city.source != "none":
            years = ", ".join(str(y) for y in city.missing_years)
            lines.append(f"{names.get(city.city, city.city)} stated nothing for {years}.")
    for pair in listed:
        home = names.get(pair.home_city, pair.home_city)
        receiving = names.get(pair.receiving_city, pair.receiving_city)
        lines.append(
            f"Disagreement {pair.year}: {home} says it sent {pair.stated_by_home} to {receiving}; "
            f"{receiving} says it received {pair.stated_by_receiving} from {home}."
        )
    more = len(report.disagreements) - len(listed)
    if more > 0:
        lines.append(f"… and {more} more disagreements (see the report).")
    return lines
