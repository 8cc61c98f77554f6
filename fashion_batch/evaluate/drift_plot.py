"""drift.png: the drift report (evaluate/drift.py) as three panels an on-call engineer reads at a
glance — the same-text cosine histogram, each probe query's neighbour overlap, and each
category's centroid shift. Rendered with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import numpy as np

from fashion_batch.io.plots import png_bytes, subplots


def render(report: dict, cos: np.ndarray) -> bytes:
    """The PNG bytes of the report's three panels."""
    fig, axes = subplots(3, figsize=(15, 4))
    _cosines(axes[0], report["same_text"])
    _overlaps(axes[1], report.get("neighbours"))
    _shifts(axes[2], report.get("centroid_shift"))
    fig.suptitle(f"drift: {report['old']} → {report['new']}", fontsize=9)
    return png_bytes(fig)


def _cosines(ax, same_text: dict) -> None:
    edges = same_text["histogram"]["edges"]
    counts = same_text["histogram"]["counts"]
    middle = zip(edges[1:-2], edges[2:-1], strict=True)
    labels = [f"<{edges[1]}"] + [f"{lo}–{hi}" for lo, hi in middle]
    labels.append(f"≥{edges[-2]}")
    ax.bar(range(len(counts)), counts, color="tab:blue")
    ax.set_xticks(range(len(counts)), labels, rotation=30, fontsize=7)
    ax.set_title(f"same-text cosine ({same_text['rows']} rows)", fontsize=9)
    ax.set_ylabel("listings")


def _overlaps(ax, neighbours: dict | None) -> None:
    if not neighbours:
        _empty(ax, "neighbour overlap@10", "no probe queries (--probe-queries)")
        return
    values = [q["overlap"] for q in neighbours["queries"]]
    ax.hist(values, bins=np.linspace(0, 1, 12), color="tab:green")
    ax.set_title(f"overlap@10 per probe query (mean {neighbours['overlap@10']:.3f})", fontsize=9)
    ax.set_xlabel("|top-10 old ∩ top-10 new| / 10")


def _shifts(ax, shifts: dict | None) -> None:
    if not shifts:
        _empty(ax, "centroid shift", "no category column")
        return
    names = list(shifts)
    ax.barh(range(len(names)), [shifts[n]["shift"] for n in names], color="tab:orange")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_title("centroid shift per category (1 − cos)", fontsize=9)


def _empty(ax, title: str, why: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
