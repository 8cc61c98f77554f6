"""Token accounting of an encoder: real tokens against the tokens its padded batches held.

Every text of a batch is padded to the batch's longest one, so a batch of one long and many short
texts spends most of its compute on padding. The encoders sort texts by length before they cut
batches to keep that share small; this counter is how the run's ledger (embed/ledger.py) shows
how small it stayed. Counting reads the attention mask the encoder already built, so it costs a
sum per batch; only the plain torch encoder, whose batches sentence-transformers builds inside
`encode`, needs a second tokenizer pass to count (a fraction of its forward pass on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TokenCount:
    """Running totals: `real` tokens (attention mask 1) and `padded`, the size of the padded
    batches (real + padding)."""

    real: int = 0
    padded: int = 0

    def add(self, attention_mask) -> None:
        """Count one batch from its (batch, seq) attention mask (numpy array or torch tensor)."""
        self.real += int(attention_mask.sum())
        self.padded += int(np.prod(tuple(attention_mask.shape)))

    def add_sentence_transformer(self, model, texts: list[str], batch_size: int) -> None:
        """Count what `SentenceTransformer.encode(texts, batch_size)` pads: it sorts texts by
        length in characters, longest first, and pads each batch to its longest tokenization."""
        enc = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)
        lengths = np.array([len(ids) for ids in enc["input_ids"]], dtype=np.int64)  # (n,)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        self.real += int(lengths.sum())
        for start in range(0, len(texts), batch_size):
            batch = lengths[order[start : start + batch_size]]  # (b,)
            self.padded += int(batch.max()) * len(batch)

    def snapshot(self) -> tuple[int, int]:
        return self.real, self.padded
