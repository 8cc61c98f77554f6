"""A synthetic marketplace catalog with real-world dirt, training triplets and shopper queries.

Why synthetic, and why this shape: embed, train and evaluate need data that reads like the seed's
(retailer feed copy next to resale listings with hashtags and emoji), that carries the dirt real
feeds carry (so every cleaning and quarantine path runs), and that has ground truth nobody had to
label. So every listing is first drawn as attributes (category, style, colour, material, brand,
size, condition) and its text is then written from them: a query built from attributes has a known
relevant set, and a model fine-tuned on the train triplets can learn that "Carhartt ... reinforced
stitching" means workwear and carry that over to queries it never saw.

One module per concern: vocabulary (the words), catalog (clean listings and their part files),
dirt (what real feeds get wrong), triplets (combinations, queries, triplets), job (config, run).
"""

from fashion_batch.sample_data.job import SampleDataConfig, run

__all__ = ["SampleDataConfig", "run"]
