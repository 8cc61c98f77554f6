"""The docs that are derived from the code stay true to it."""

from __future__ import annotations

from pathlib import Path

import fashion_batch
from fashion_batch.cli_docs import markdown

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(fashion_batch.__file__).parent


def test_cli_reference_is_generated_from_the_current_flags():
    assert (ROOT / "docs" / "cli.md").read_text() == markdown(), "stale: run `make docs`"


def test_architecture_names_every_package_and_module():
    """A contributor finds the one file to touch from docs/architecture.md alone."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    names = sorted(
        str(p.relative_to(PACKAGE)).replace("__init__.py", "")
        for p in PACKAGE.rglob("*.py")
        if p.name != "__main__.py"
    )
    missing = [n for n in names if n and n not in text]
    assert not missing, f"docs/architecture.md does not mention: {missing}"


def test_readme_is_a_landing_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024
    for target in ("docs/cli.md", "docs/guarantees.md", "docs/cluster.md", "docs/architecture.md"):
        assert target in readme and (ROOT / target).is_file(), target
