"""Side by side: cleaning pathological listing text against a plain str.replace pass (not a test).

    .venv/bin/python benchmarks/clean_text.py [--mb 1] [--repeats 5]

Each case is about `--mb` megabytes of one field's text. For each, three timings over the same
text, best of `--repeats`, in this process:

    replace    text.replace("<", " "): one plain pass in C over the text, the baseline
    clean      fashion_batch.text.clean_text(text)
    render     Template("{description}").render(...), what the embed job runs per field

and clean and render as a multiple of replace. Cleaning must stay linear in the text's length: a
backtracking tag strip rescans the rest of the text from every "<" that has no ">" after it, so
its time grows fourfold per doubling, and one seller's pasted page would stall a whole batch.

Cases:
    unclosed   "<" repeated, no ">" anywhere (the worst case for the old regex)
    nested     "<div><p><span>" * k + "text" + "</span></p></div>" * k
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchmarks/common.py, also when imported from elsewhere
sys.path.insert(0, str(HERE.parent))

from common import machine  # noqa: E402

from fashion_batch.text import Template, clean_text  # noqa: E402


def cases(size: int) -> dict[str, str]:
    """{name: text} of about `size` characters each."""
    opening, closing = "<div><p><span>", "</span></p></div>"
    depth = size // (len(opening) + len(closing))
    return {
        "unclosed": "<" * size,
        "nested": opening * depth + "text" + closing * depth,
    }


def best_of(repeats: int, fn, text: str) -> float:
    """The fastest of `repeats` calls, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(text)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=1.0, help="size of each case's text, in MB")
    p.add_argument("--repeats", type=int, default=5, help="timings per variant; the best is kept")
    args = p.parse_args(argv)
    template = Template("{description}")
    variants = {
        "replace": lambda text: text.replace("<", " "),
        "clean": clean_text,
        "render": lambda text: template.render({"description": text}),
    }
    print(f"# {machine()}")
    print(f"# python {sys.version.split()[0]}, best of {args.repeats}")
    print(
        f"{'case':<10} {'chars':>9} {'replace ms':>11} {'clean ms':>9} {'x':>6} "
        f"{'render ms':>10} {'x':>6}"
    )
    for name, text in cases(int(args.mb * 1_000_000)).items():
        ms = {v: best_of(args.repeats, fn, text) * 1000 for v, fn in variants.items()}
        base = ms["replace"]
        print(
            f"{name:<10} {len(text):>9} {base:>11.2f} {ms['clean']:>9.2f} "
            f"{ms['clean'] / base:>6.1f} {ms['render']:>10.2f} {ms['render'] / base:>6.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
