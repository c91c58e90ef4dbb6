"""The case flowchart as a picture: the state machine drawn from the table the code runs.

Owns ``citynode flow --format svg`` (and ``docs/case-flow.svg``). The edges are read from
:func:`protocol.cases.mermaid` — itself drawn from ``protocol.cases.TRANSITIONS`` — so the picture,
the Mermaid diagram in ``docs/case-flow.md`` and the code can never tell different stories.
Invariants:

* Nothing here decides a transition: a state, an arrow or a label that is not in the table cannot
  appear (the edges are parsed from the diagram and every one is drawn).
* The layout is computed from the edges, not drawn by hand (:func:`layout`; arrows back to an
  earlier state, like the updated inquiry, are ignored for the placing). A step that keeps the
  state (a progress report; a message crossing the end) is written beside its state, not drawn
  as a loop.
* Pure Python (matplotlib): no Graphviz or other program is needed to draw it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from matplotlib.axes import Axes
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from node.pictures import PictureFormat, new_figure, render
from protocol.cases import TERMINAL_STATES, CaseState, Role, mermaid

START: Final = "[*]"
COLUMN_GAP: Final = 4.0
ROW_GAP: Final = 2.4
BOX_WIDTH: Final = 2.3
INCHES: Final = 0.72  # per unit of the drawing
BOX_HEIGHT: Final = 0.62
NODE_COLOUR: Final = "#e8eef6"
TERMINAL_COLOUR: Final = "#f2e3e3"
EDGE_COLOUR: Final = "#36454f"
_EDGE: Final = re.compile(r"^\s*(\S+) --> (\S+)(?:: (.*))?$")


@dataclass(frozen=True, slots=True)
class Edge:
    """One arrow of the diagram: from a state to a state, with the steps that take it."""

    source: str
    target: str
    labels: tuple[str, ...]


def flow_edges(role: Role | None = None) -> list[Edge]:
    """The arrows of :func:`protocol.cases.mermaid`, start and end markers included.

    Args:
        role: one end's view, or ``None`` for the flow with each message's sender.

    Returns:
        The edges in the diagram's order.
    """
    edges = []
    for line in mermaid(role).splitlines()[1:]:
        found = _EDGE.match(line)
        if found is None:  # pragma: no cover - mermaid() writes only edges after its header
            raise ValueError("the case-flow diagram has a line that is not an arrow")
        source, target, labels = found.groups()
        edges.append(Edge(source, target, tuple(labels.split(", ")) if labels else ()))
    return edges


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each state is drawn, in grid units (a column, a row).

    Attributes:
        cells: each boxed state's column and row (row 0 is the main line, 1 above it).
        bars: each state drawn as a bar under the main line, from column to column.
        main: the main line, left to right.
    """

    cells: Mapping[str, tuple[float, float]]
    bars: Mapping[str, tuple[float, float]]
    main: tuple[str, ...]


def layout(edges: Sequence[Edge]) -> Layout:
    """Place the states: the longest run of open states on one line, left to right; the other
    open states above the line after their first predecessor; an end state reached from three
    states or more as a bar under the line, spanning them; any other end state above the line,
    after its last predecessor.

    Args:
        edges: the diagram's arrows (:func:`flow_edges`).

    Returns:
        The layout.
    """
    states = [s.value for s in CaseState if any(s.value in (e.source, e.target) for e in edges)]
    forward = _forward_edges(edges, states)
    predecessors = {s: [p for p in states if s in forward[p]] for s in states}
    main = _longest_open_run(states, forward)
    cells: dict[str, tuple[float, float]] = {state: (i, 0) for i, state in enumerate(main)}
    ends = [s for s in states if CaseState(s) in TERMINAL_STATES]
    for state in states:  # the other open states, in the table's order
        if state not in cells and state not in ends:
            parent = next(p for p in predecessors[state] if p in cells)
            cells[state] = (_free(cells, cells[parent][0] + 0.5), 1)
    bars: dict[str, tuple[float, float]] = {}
    for state in ends:
        sources = [p for p in predecessors[state] if p in cells]
        if len(sources) >= 3:
            landing = [landing_column(cells, p) for p in sources]
            bars[state] = (min(landing), max(landing))
        else:
            cells[state] = (_free(cells, max(cells[p][0] for p in sources) + 1), 1)
    return Layout(cells=cells, bars=bars, main=main)


def landing_column(cells: Mapping[str, tuple[float, float]], source: str) -> float:
    """Where an arrow from ``source`` down into a bar lands: under it, or, when a box of the main
    line is in the way, half a column to the left (between two boxes)."""
    column, row = cells[source]
    in_the_way = row != 0 and (column, 0) in cells.values()
    return column - 0.5 if in_the_way else column


def _free(cells: Mapping[str, tuple[float, float]], column: float) -> float:
    """The first column from ``column`` on whose upper cell is free."""
    while (column, 1) in cells.values():
        column += 1
    return column


def _longest_open_run(states: Sequence[str], forward: Mapping[str, list[str]]) -> tuple[str, ...]:
    """The longest path of open (not terminal) states from the first state."""
    open_states = [s for s in states if CaseState(s) not in TERMINAL_STATES]
    best: dict[str, tuple[str, ...]] = {}
    for state in reversed(_topological(states, forward)):
        if state not in open_states:
            continue
        tails = [best[t] for t in forward[state] if t in best]
        best[state] = (state, *max(tails, key=len, default=()))
    return best[states[0]]


def _forward_edges(edges: Sequence[Edge], states: Sequence[str]) -> dict[str, list[str]]:
    """The arrows between states that do not close a cycle (depth-first from the first state)."""
    successors: dict[str, list[str]] = {s: [] for s in states}
    for edge in edges:
        if edge.source in successors and edge.target in successors and edge.source != edge.target:
            successors[edge.source].append(edge.target)
    forward: dict[str, list[str]] = {s: [] for s in states}
    on_path: set[str] = set()
    done: set[str] = set()

    def visit(state: str) -> None:
        on_path.add(state)
        for target in successors[state]:
            if target in on_path:
                continue  # an arrow back, such as the updated inquiry
            forward[state].append(target)
            if target not in done:
                visit(target)
        on_path.discard(state)
        done.add(state)

    for state in states:
        if state not in done:
            visit(state)
    return forward


def _topological(states: Sequence[str], forward: Mapping[str, list[str]]) -> list[str]:
    incoming = {s: sum(s in targets for targets in forward.values()) for s in states}
    ready = [s for s in states if incoming[s] == 0]
    order = []
    while ready:
        state = ready.pop(0)
        order.append(state)
        for target in forward[state]:
            incoming[target] -= 1
            if incoming[target] == 0:
                ready.append(target)
    return order


def flow_svg(role: Role | None = None) -> str:
    """The flowchart as an SVG document (deterministic, text kept as text)."""
    return flow_picture("svg", role).decode("utf-8")


def flow_picture(picture_format: PictureFormat, role: Role | None = None) -> bytes:
    """Draw the flowchart of the case state machine.

    Args:
        picture_format: ``svg`` or ``png``.
        role: one end's view, or ``None`` for the flow with each message's sender.

    Returns:
        The picture's bytes.
    """
    edges = flow_edges(role)
    placed = layout(edges)
    columns = max(c for c, _ in placed.cells.values()) + 1
    left, right = -0.75 * COLUMN_GAP, (columns - 0.35) * COLUMN_GAP
    bottom, top = -1.6 * ROW_GAP, 1.4 * ROW_GAP
    figure = new_figure((right - left) * INCHES, (top - bottom) * INCHES)
    axes = figure.add_subplot()
    axes.set_xlim(left, right)
    axes.set_ylim(bottom, top)
    axes.set_aspect("equal")
    axes.axis("off")
    who = f"as the {role} city sees it" if role else "each step with the city that sends it"
    axes.set_title(f"The case flow ({who})", fontsize=12, loc="left")
    for state, (column, row) in placed.cells.items():
        _box(axes, state, (column * COLUMN_GAP, row * ROW_GAP), BOX_WIDTH)
    for state, (first, last) in placed.bars.items():
        centre = ((first + last) / 2 * COLUMN_GAP, -ROW_GAP)
        _box(axes, state, centre, (last - first) * COLUMN_GAP + BOX_WIDTH)
    pairs = {(e.source, e.target) for e in edges}
    for edge in edges:
        _edge(axes, edge, placed, reverse=(edge.target, edge.source) in pairs)
    return render(figure, picture_format)


def _centre(placed: Layout, state: str) -> tuple[float, float]:
    if state in placed.bars:
        first, last = placed.bars[state]
        return (first + last) / 2 * COLUMN_GAP, -ROW_GAP
    column, row = placed.cells[state]
    return column * COLUMN_GAP, row * ROW_GAP


def _half_width(placed: Layout, state: str) -> float:
    if state in placed.bars:
        first, last = placed.bars[state]
        return ((last - first) * COLUMN_GAP + BOX_WIDTH) / 2
    return BOX_WIDTH / 2


def _box(axes: Axes, state: str, centre: tuple[float, float], width: float) -> None:
    x, y = centre
    terminal = CaseState(state) in TERMINAL_STATES
    axes.add_patch(
        FancyBboxPatch(
            (x - width / 2, y - BOX_HEIGHT / 2),
            width,
            BOX_HEIGHT,
            boxstyle="round,pad=0.02,rounding_size=0.18",
            facecolor=TERMINAL_COLOUR if terminal else NODE_COLOUR,
            edgecolor=EDGE_COLOUR,
            linewidth=2.2 if terminal else 1.2,
            zorder=3,
        )
    )
    axes.text(x, y, state, ha="center", va="center", fontsize=9.5, fontweight="bold", zorder=4)


def _edge(axes: Axes, edge: Edge, placed: Layout, *, reverse: bool) -> None:
    """One arrow: the start and end markers, a step that keeps its state, or a move."""
    if edge.source == START:  # the start marker, left of the first state
        x, y = _centre(placed, edge.target)
        start = (x - BOX_WIDTH / 2 - 0.9, y)
        axes.plot(*start, marker="o", markersize=11, color=EDGE_COLOUR, zorder=4)
        _arrow(axes, start, (x - BOX_WIDTH / 2, y), 0.0)
        return
    if edge.target == START:  # the end marker, right of an end state
        x, y = _centre(placed, edge.source)
        x += _half_width(placed, edge.source)
        _arrow(axes, (x, y), (x + 0.55, y), 0.0)
        axes.plot(
            x + 0.55, y, marker="o", markersize=13, markerfacecolor="white", color=EDGE_COLOUR
        )
        axes.plot(x + 0.55, y, marker="o", markersize=6, color=EDGE_COLOUR)
        return
    if edge.source == edge.target:  # a step that keeps the state: written beside its box
        x, y = _centre(placed, edge.source)
        text = "\n".join(f"\u21bb {label}" for label in edge.labels)
        above = y == 0  # on the main line the arrows to a bar leave from below
        offset = BOX_HEIGHT / 2 + 0.12
        axes.text(x, y + offset if above else y - offset, text, ha="center",
                  va="bottom" if above else "top", fontsize=7.5, fontstyle="italic",
                  color=EDGE_COLOUR)  # fmt: skip
        return
    if edge.target in placed.bars:
        start, end = _into_bar(placed, edge.source, edge.target)
        _arrow(axes, start, end, 0.0)
        # Labelled between the main line and the bar, clear of the main line's own labels.
        middle = -ROW_GAP / 2
        x = start[0] + (end[0] - start[0]) * (middle - start[1]) / (end[1] - start[1])
        _label(axes, (x, middle), (x, middle), 0.0, edge.labels)
        return
    source, target = _centre(placed, edge.source), _centre(placed, edge.target)
    rad = 0.2 if reverse else 0.0
    if source[1] == target[1] and abs(target[0] - source[0]) > COLUMN_GAP * 1.5:
        rad = 0.3  # over the boxes between
    start, end = _border(source, target), _border(target, source)
    _arrow(axes, start, end, rad)
    _label(axes, start, end, rad, edge.labels)


def _into_bar(placed: Layout, source: str, bar: str) -> tuple[tuple[float, float], ...]:
    """An arrow straight down into a bar (:func:`landing_column`)."""
    _, y = _centre(placed, source)
    x = landing_column(placed.cells, source) * COLUMN_GAP
    return (x, y - BOX_HEIGHT / 2), (x, -ROW_GAP + BOX_HEIGHT / 2)


def _border(centre: tuple[float, float], towards: tuple[float, float]) -> tuple[float, float]:
    """Where the line from a box's centre towards a point leaves the box."""
    (x, y), (tx, ty) = centre, towards
    dx, dy = tx - x, ty - y
    scale = min(
        (BOX_WIDTH / 2) / abs(dx) if dx else math.inf,
        (BOX_HEIGHT / 2 + 0.04) / abs(dy) if dy else math.inf,
    )
    return x + dx * scale, y + dy * scale


def _arrow(axes: Axes, start: tuple[float, float], end: tuple[float, float], rad: float) -> None:
    axes.add_patch(
        FancyArrowPatch(
            start,
            end,
            connectionstyle=f"arc3,rad={rad}",
            arrowstyle="-|>",
            mutation_scale=13,
            color=EDGE_COLOUR,
            linewidth=1.1,
            zorder=2,
        )
    )


def _label(
    axes: Axes,
    start: tuple[float, float],
    end: tuple[float, float],
    rad: float,
    labels: Sequence[str],
) -> None:
    """The arrow's steps, at the middle of its curve (arc3: mid + rad/2 x the normal); over a
    level arrow, just above it, so its head stays in sight."""
    (x1, y1), (x2, y2) = start, end
    x = (x1 + x2) / 2 + rad * (y2 - y1) / 2
    y = (y1 + y2) / 2 - rad * (x2 - x1) / 2
    level = y1 == y2 and x1 != x2 and rad == 0
    axes.text(
        x,
        y + 0.1 if level else y,
        "\n".join(labels),
        ha="center",
        va="bottom" if level else "center",
        fontsize=7.5,
        color=EDGE_COLOUR,
        bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none"},
        zorder=5,
    )
