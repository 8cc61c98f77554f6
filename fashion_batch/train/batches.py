"""The global batches: NO_DUPLICATES, and at most one triplet per product in a batch.

MNRL scores every anchor against every positive (and negative) in the global batch, all but its
own as negatives. When a batch partner's positive is the same product as the anchor's own (a
relisting, another size or colour of the same item), it is as relevant to the anchor as its own
positive, and the loss pushes it away: an in-batch false negative. sentence-transformers'
`NoDuplicatesBatchSampler` keeps out only exact repeats of a text; `ProductBatchSampler` is that
sampler with one more value per row, the product key of its positive, so two triplets of one
product are never in one batch: the second is deferred to a later batch, as NO_DUPLICATES defers
a repeated text.

The product key is mine.py's `product_key` (lower case, apostrophes dropped, the rest of the
punctuation a space) of the positive's title: its cleaned text up to the first ". ", the text
`embed` and `sample-data` compose as "{title}. {description}" (the whole text when it has no
such separator). Triplets carry no listing id or brand, and a title names the item (brand and
all, in most listings): two listings titled alike answer the same queries.

Every rank builds the same sampler and draws the same global batches (`data.shard` gives each
its slice), so the rule holds across ranks: what one rank's anchors meet in the gathered batch
holds no second triplet of their products either.
"""

from __future__ import annotations

import functools
from collections import Counter

from fashion_batch.text import clean_text
from fashion_batch.train.mine import product_key

PRODUCT = "\x1fproduct:"  # marks a row's product key among its texts (no text starts so)


def positive_product(positive: str) -> str:
    """The product key of a positive text: `product_key` of its title (the text up to the first
    ". "), or the whole normalised text when the title has no letter or digit."""
    text = clean_text(positive)
    key = product_key(text.split(". ", 1)[0], None)
    return key or product_key(text, None) or text


def product_column(positives: list[str]) -> list[str]:
    """One marked product key per row: the extra value NO_DUPLICATES compares."""
    return [PRODUCT + positive_product(p) for p in positives]


def product_groups(positives: list[str]) -> dict:
    """How many distinct products the triplets have and how many triplets share theirs with
    another triplet (those the sampler keeps apart)."""
    sizes = Counter(positive_product(p) for p in positives)
    return {
        "products": len(sizes),
        "triplets_sharing_a_product": sum(n for n in sizes.values() if n > 1),
    }


@functools.cache
def _sampler_class():
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    class ProductBatchSampler(NoDuplicatesBatchSampler):
        """`NoDuplicatesBatchSampler` over rows that carry a `product` column (`product_column`),
        counting each deferral of a row by its cause in `deferred`: a text already in the batch
        (`same_text`), or only its product (`same_product`). The counts are the last epoch
        drawn's (reset by every `__iter__`)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.deferred = {"same_text": 0, "same_product": 0}

        def __iter__(self):
            self.deferred = dict.fromkeys(self.deferred, 0)
            yield from super().__iter__()

        def _iter_one_pass(self, get_sample_values, has_overlap):
            def counted(values: set[str], batch_values: set[str]) -> bool:
                if not has_overlap(values, batch_values):
                    return False
                texts = {v for v in values if not v.startswith(PRODUCT)}
                cause = "same_text" if has_overlap(texts, batch_values) else "same_product"
                self.deferred[cause] += 1
                return True

            return super()._iter_one_pass(get_sample_values, counted)

    return ProductBatchSampler


def product_batch_sampler(rows, batch_size: int, seed: int):
    """The sampler of GLOBAL batches over `rows` (a `data.Rows` with a `product` column):
    `drop_last` because all_gather needs equal shapes, and then every worker count runs the
    same steps."""
    import torch

    return _sampler_class()(
        rows, batch_size=batch_size, drop_last=True, generator=torch.Generator(), seed=seed
    )
