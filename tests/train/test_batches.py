"""train/batches.py: global batches hold no two triplets of one product, on every rank alike."""

from __future__ import annotations

import pytest

from fashion_batch.train.batches import positive_product, product_groups
from fashion_batch.train.data import Rows, global_batch_sampler, shard


def product_triplets(products: int = 12, variants: int = 3) -> dict[str, list[str]]:
    """Several listings of each product (other size, other wording), each the positive of its
    own query: for query A, the positive of a query B of the same product is relevant too."""
    rows = {"anchor": [], "positive": [], "negative": []}
    for p in range(products):
        for v in range(variants):
            title = [f"Brand{p} jeans {p}", f"BRAND{p}  Jeans {p}!", f"brand{p} - jeans {p}"][v]
            rows["anchor"].append(f"query {p} {v}")
            rows["positive"].append(f"{title}. size {30 + v}, worn {v} times")
            rows["negative"].append(f"negative {p} {v}")
    return rows


def test_product_key_is_the_normalised_title_of_the_positive():
    same = ["Levi's 501 Jeans. W32, blue", "LEVIS 501  jeans!. W30", "levis 501 jeans"]
    assert {positive_product(t) for t in same} == {"levis 501 jeans"}
    assert positive_product("Levi's 501 Jeans. W32") != positive_product("Levi's 505. W32")
    # A text without a title separator is its own key; one with an empty title too.
    assert positive_product("red wool coat, size M") == "red wool coat size m"
    assert positive_product("!!. red coat") == "red coat"
    assert product_groups(product_triplets()["positive"]) == {
        "products": 12,
        "triplets_sharing_a_product": 36,
    }


def test_no_global_batch_holds_two_triplets_of_one_product():
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    rows = product_triplets()
    key = [positive_product(p) for p in rows["positive"]]
    sampler = global_batch_sampler(rows, batch_size=8, seed=42)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 4 and all(len(b) == 8 for b in batches)
        for batch in batches:
            assert len({key[i] for i in batch}) == 8, [rows["positive"][i] for i in batch]
        # Every text differs, so every deferral was for a product already in the batch.
        assert sampler.deferred["same_text"] == 0 and sampler.deferred["same_product"] > 0

    # NO_DUPLICATES alone, same rows and seed: the texts all differ, so it lets products pair up.
    plain = NoDuplicatesBatchSampler(
        Rows(rows), batch_size=8, drop_last=True, generator=sampler.generator, seed=42
    )
    plain.set_epoch(0)
    assert any(len({key[i] for i in batch}) < 8 for batch in plain)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_every_rank_draws_the_same_global_batches_and_keeps_its_slice(world):
    """What makes 2×8 train like 1×16 with this sampler too: each rank builds its own sampler,
    all draw identical batches, and the slices in rank order are the global batch."""
    rows = product_triplets()
    per_rank = []
    for _ in range(world):  # one sampler per rank, built independently
        sampler = global_batch_sampler(rows, batch_size=8, seed=42)
        sampler.set_epoch(1)
        per_rank.append(list(sampler))
    assert all(batches == per_rank[0] for batches in per_rank)
    for batch in per_rank[0]:
        assert sum((shard(batch, r, world) for r in range(world)), []) == batch


def test_text_repeats_are_counted_apart_from_products():
    rows = product_triplets(products=16, variants=1)
    rows["negative"] = ["the same negative"] * 8 + [f"negative {i}" for i in range(8)]
    sampler = global_batch_sampler(rows, batch_size=4, seed=0)
    sampler.set_epoch(0)
    batches = list(sampler)
    assert sampler.deferred["same_text"] > 0 and sampler.deferred["same_product"] == 0
    for batch in batches:
        negatives = [rows["negative"][i] for i in batch]
        assert len(set(negatives)) == len(negatives)
