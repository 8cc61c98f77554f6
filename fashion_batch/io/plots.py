"""PNG figures for the reports (drift.png, training_loss.png): matplotlib's Agg backend, so no
display is needed, imported only when a figure is drawn."""

from __future__ import annotations

import io


def subplots(ncols: int, figsize: tuple[float, float]):
    """(figure, axes) of one row of `ncols` panels."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt.subplots(1, ncols, figsize=figsize)


def png_bytes(fig) -> bytes:
    """The figure laid out and rendered as PNG bytes; the figure is closed."""
    from matplotlib import pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
