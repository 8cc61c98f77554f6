"""Shared test data: the dirty catalog every embed test starts from, and its expected fates."""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa

from fashion_batch.embed.encode import Embed, EmbedUnits
from fashion_batch.embed.plan import find_duplicate_rows, plan_units, unit_dict
from fashion_batch.embed.publish import publish
from fashion_batch.embed.stages import PrepareUnits
from fashion_batch.embed.state import RunState
from fashion_batch.embed.write import WriteUnits
from fashion_batch.io.inputs import list_input_files
from fashion_batch.text import Template
from fashion_batch.train.config import COLUMNS

# A catalog with every kind of dirt the job must handle, and the fate each row must meet.
DIRTY_ROWS = [
    # listing_id, title, description, expected reason (None = embedded)
    (101, "Zara black pleated pants", "Mid-rise pants with interior elastic waistband.", None),
    (102, "Vintage Levi's 501", "<p>Soft <b>denim</b> &amp; rivets</p>", None),
    (103, "Pink flower top w/ cowl neckline ðŸ’•", "Such a cute top\x00 for summer!", None),
    (None, "Orphan jacket", "no id on this one", "missing_id"),
    (104, "   ", None, "empty_text"),
    (105, None, "<br/>  \x07 ", "empty_text"),
    (102, "Vintage Levi's 501 (again)", "a later copy of 102", "duplicate_id"),
    (106, None, "Hollister strappy sports bra, size small", None),
    (107, "The North Face fleece", None, None),
    (108, "Carhartt WIP jacket " * 200, "very long text " * 300, None),
]


def dirty_table(rows=DIRTY_ROWS) -> pa.Table:
    return pa.table(
        {
            "listing_id": pa.array([r[0] for r in rows], pa.int64()),
            "title": pa.array([r[1] for r in rows], pa.string()),
            "description": pa.array([r[2] for r in rows], pa.string()),
            "price": pa.array([float(i) for i in range(len(rows))]),
        }
    )


@contextmanager
def own_ray(**init_kwargs):
    """A local Ray of another shape for an `own_ray` module (conftest says which and why): the
    shared cluster goes down first; conftest orders these modules after its last user."""
    import ray

    ray.shutdown()
    # address='local': a new cluster, never one `ray start` left running on the machine (which
    # ray.init() without an address would join)
    ray.init(address="local", include_dashboard=False, log_to_driver=False, **init_kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


# ------------------------------------------------------------ the embed stages without Ray

TEMPLATE = "{title}. {description}"
DIM = 4


class FakeEncoder:
    """A deterministic stand-in for the model: the stages' bookkeeping is under test, not it."""

    dim = DIM

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.array([[len(t), t.count(" "), 1.0, 0.5] for t in texts], dtype=np.float32)


def _fake_embed_units() -> EmbedUnits:
    return EmbedUnits(embed=Embed(FakeEncoder(), DIM))


def run_stages(
    input_dir: Path, output: Path, rows_per_unit: int = 3, template: str = TEMPLATE
) -> dict:
    """What the embed job does per unit, without Ray: plan, prepare, embed, write, publish."""
    fs, files = list_input_files(str(input_dir))
    columns = ["listing_id", *Template(template).columns]
    units, _, rows_in = plan_units(fs, files, "listing_id", columns[1:], rows_per_unit)
    duplicates = find_duplicate_rows(fs, files, "listing_id")
    prepare = PrepareUnits(fs, columns, template, "listing_id", duplicates)
    embed = _fake_embed_units()
    write = WriteUnits(fs, str(output), "listing_id", {u.index: u.length for u in units}, {})
    stats = []
    for u in units:
        packed = prepare(pa.Table.from_pylist([unit_dict(u)]))
        stats += write(embed(packed)).to_pylist()
    published = publish(fs, str(output), stats, target_mib=0)  # one part per unit
    RunState(fs, str(output)).end_publish()
    return {"rows_in": rows_in, "stats": stats, "units": units, **published}


# ------------------------------------------------------------ training triplets

COLOURS = ["red", "blue", "black", "white", "green", "pink", "beige", "navy"]
ITEMS = [
    ("coat", "wool"),
    ("jeans", "denim"),
    ("sneakers", "canvas"),
    ("dress", "silk"),
    ("boots", "leather"),
    ("hoodie", "fleece"),
    ("skirt", "linen"),
    ("blazer", "tweed"),
    ("shorts", "cotton"),
    ("bag", "suede"),
]


def make_triplets() -> dict[str, list[str]]:
    """80 short, distinct triplets: a query, the listing that matches it, one that does not."""
    rows = {c: [] for c in COLUMNS}
    for (ci, colour), (ii, (item, material)) in itertools.product(
        enumerate(COLOURS), enumerate(ITEMS)
    ):
        other_colour = COLOURS[(ci + 3) % len(COLOURS)]
        other_item, other_material = ITEMS[(ii + 5) % len(ITEMS)]
        rows["anchor"].append(f"{colour} {item}")
        rows["positive"].append(f"{material} {item} in {colour}, size M, good condition")
        rows["negative"].append(f"{other_material} {other_item} in {other_colour}, barely worn")
    return rows


def run_cli(argv: list[str], env: dict[str, str], timeout: int = 600):
    """`python -m fashion_batch ARGV` as a fresh process, as a user's shell runs it: the
    CompletedProcess, stdout and stderr captured as text."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "fashion_batch", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
