"""Pictures the node draws — the balance chart and the case flowchart — as PNG or SVG bytes.

Owns the one way the node uses matplotlib. Invariants:

* No ``pyplot``: each picture is its own :class:`~matplotlib.figure.Figure` drawn on an Agg canvas,
  so nothing global is touched, no window or display is needed, and two pictures can be drawn at
  once (in a server or in tests).
* SVG output is deterministic (no date, fixed ids) and keeps text as ``<text>`` elements, so a
  generated file in ``docs/`` changes only when the picture does, and its labels can be searched.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PictureFormat = Literal["png", "svg"]
FORMATS: Final[tuple[PictureFormat, ...]] = ("png", "svg")
DPI: Final = 120


def new_figure(width_in: float, height_in: float) -> Figure:
    """A blank figure of the given size in inches, on an Agg canvas."""
    # matplotlib costs ~40 MiB: only processes that draw load it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    figure = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def render(figure: Figure, picture_format: PictureFormat) -> bytes:
    """The figure as PNG or SVG bytes.

    Args:
        figure: a figure from :func:`new_figure`.
        picture_format: ``png`` or ``svg``.

    Returns:
        The file's bytes.
    """
    import matplotlib  # noqa: PLC0415 (see new_figure)

    out = io.BytesIO()
    if picture_format == "svg":
        # Fixed ids instead of random ones, and text kept as text.
        with matplotlib.rc_context({"svg.hashsalt": "citynode", "svg.fonttype": "none"}):
            figure.savefig(out, format="svg", metadata={"Date": None})
    else:
        figure.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()


def format_of(name: str) -> PictureFormat | None:
    """The format a file name's suffix asks for (``.png``, ``.svg``), or ``None``."""
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return "png" if suffix == "png" else "svg" if suffix == "svg" else None
