"""Figures drawn straight onto matplotlib's Agg canvas: no pyplot, no global backend switch.

Library code must not change matplotlib's backend for the whole process (a user's notebook
or GUI keeps its own); a Figure with its own Agg canvas needs neither pyplot nor a display.
"""

from __future__ import annotations

import io
from typing import Any


def figure(size: tuple[float, float], rows: int = 1) -> tuple[Any, list[Any]]:
    """A new figure of `size` inches on its own Agg canvas, with `rows` axes stacked vertically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(rows, 1, squeeze=False)[:, 0])


def png_bytes(fig: Any, dpi: int = 100) -> bytes:
    """The figure as PNG bytes, laid out tightly."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
