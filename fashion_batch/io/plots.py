"""PNG figures for the reports (drift.png, training_loss.png): matplotlib's Agg backend, so no
display is needed, imported only when a figure is drawn (or early, by `preload`, in a process
that has time for it while the job starts: embed's sidecar, runtime/sidecar.py)."""

from __future__ import annotations

import io


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def preload() -> None:
    """Import matplotlib now, so that the first figure only draws."""
    pyplot()


def subplots(ncols: int, figsize: tuple[float, float]):
    """(figure, axes) of one row of `ncols` panels."""
    return pyplot().subplots(1, ncols, figsize=figsize)


def png_bytes(fig) -> bytes:
    """The figure laid out and rendered as PNG bytes; the figure is closed."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    pyplot().close(fig)
    return buf.getvalue()
