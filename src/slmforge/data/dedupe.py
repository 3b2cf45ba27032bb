"""Near-duplicate detection by embedding similarity (all-MiniLM-L6-v2, offline)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Embedder = Callable[[Sequence[str]], Any]  # texts -> unit-norm vectors (numpy rows)


class NearDuplicates:
    """Unit-norm embeddings of every prompt so far; a text is near when its cosine to any of
    them reaches the threshold."""

    def __init__(self, threshold: float, embed: Embedder | None) -> None:
        self.threshold = threshold
        self.embed = embed or _default_embedder()
        self.vectors: Any = None

    def add(self, texts: list[str]) -> None:
        import numpy as np

        if texts:
            new = np.asarray(self.embed(texts), dtype=np.float32)
            self.vectors = new if self.vectors is None else np.vstack([self.vectors, new])

    def is_near(self, text: str) -> bool:
        import numpy as np

        if self.vectors is None:
            return False
        vector = np.asarray(self.embed([text]), dtype=np.float32)[0]
        return float((self.vectors @ vector).max()) >= self.threshold


def _default_embedder() -> Embedder:
    from slmforge.models.embeddings import EMBEDDING_BATCH, embedding_model

    model = embedding_model()
    return lambda texts: model.encode(
        list(texts), batch_size=EMBEDDING_BATCH, normalize_embeddings=True
    )
