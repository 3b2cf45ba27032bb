"""Constrained decoding for local engines with llguidance (the grammar engine behind
llama.cpp's and vLLM's structured outputs): JSON schemas, JSON-object mode and grammars that
force a tool call. It works per request on the CPU: each step computes a bitmask of the tokens
that keep the output inside the grammar (microseconds to a millisecond on vocabularies of 150k),
and the `Sampler` draws only among them, so any model, however weak, returns text that parses
and validates. A reply cut by `max_tokens` is still cut (finish_reason `length`).

`grammar_tokenizer` wraps a Hugging Face fast tokenizer once per engine (llguidance reads its
vocabulary and merges); the end-of-turn ids are the grammar's end tokens, so a complete value is
followed by the end of the reply.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

import numpy as np

from slmforge.errors import InputError

_TOKENIZERS: WeakKeyDictionary[Any, dict[tuple[int, tuple[int, ...]], Any]] = WeakKeyDictionary()
# Compact JSON (no free whitespace): runs of whitespace are the classic way a constrained model
# never ends; OpenAI's and vLLM's structured outputs are compact as well.
JSON_OPTIONS = {"whitespace_flexible": False}


def grammar_tokenizer(tokenizer: Any, vocab_size: int, end_ids: list[int]) -> Any:
    """llguidance's view of `tokenizer` (`vocab_size` tokens; a model's extra logit rows are
    masked by `GrammarConstraint`), with `end_ids` as the tokens that end a reply; cached per
    tokenizer (building it reads the whole vocabulary)."""
    import llguidance.hf

    cache = _TOKENIZERS.setdefault(tokenizer, {})
    key = (vocab_size, tuple(end_ids))
    if key not in cache:
        cache[key] = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=vocab_size, eos_token=list(end_ids) or None
        )
    return cache[key]


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """A grammar for one JSON value matching `schema` (OpenAI's strict structured outputs)."""
    from llguidance import LLMatcher

    return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)


def json_object_grammar() -> str:
    """`response_format: {"type": "json_object"}`: any JSON object."""
    return json_schema_grammar({"type": "object"})


def lark_grammar(lark: str) -> str:
    from llguidance import LLMatcher

    return LLMatcher.grammar_from_lark(lark)


def check_grammar(grammar: str, tokenizer: Any, what: str) -> None:
    """Raise InputError naming `what` when llguidance cannot use `grammar` (an unsupported,
    invalid or unsatisfiable schema), before any token is generated."""
    from llguidance import LLMatcher

    error = LLMatcher.validate_grammar(grammar, tokenizer)
    if error:
        raise InputError(f"{what}: {error.strip()}")


class GrammarConstraint:
    """The `Sampler`'s constraint: which tokens may come next, and when the value is complete."""

    def __init__(self, tokenizer: Any, grammar: str) -> None:
        import llguidance
        import llguidance.numpy

        self.matcher = llguidance.LLMatcher(tokenizer, grammar)
        if self.matcher.is_error():  # callers check first (check_grammar); this is the backstop
            raise InputError(f"structured output: {self.matcher.get_error()}")
        self.vocab_size = tokenizer.vocab_size
        self._bitmask = llguidance.numpy.allocate_token_bitmask(1, self.vocab_size)
        self._fill = llguidance.numpy.fill_next_token_bitmask
        self._allowed: np.ndarray | None = None

    def allowed_mask(self, size: int) -> np.ndarray:
        """Booleans over `size` logits (rows past the tokenizer's vocabulary are never allowed)."""
        if self._allowed is None:
            self._fill(self.matcher, self._bitmask, 0)
            bits = np.unpackbits(self._bitmask[0].view(np.uint8), bitorder="little")
            self._allowed = bits[: self.vocab_size].astype(bool)
        if size == self._allowed.size:
            return self._allowed
        mask = np.zeros(size, dtype=bool)
        mask[: min(size, self.vocab_size)] = self._allowed[:size]
        return mask

    def allows(self, token_id: int) -> bool:
        return token_id < self.vocab_size and bool(self.allowed_mask(self.vocab_size)[token_id])

    def advance(self, token_id: int) -> None:
        if not self.matcher.consume_token(token_id):
            raise RuntimeError(f"structured output: token {token_id} rejected by the grammar")
        self._allowed = None

    @property
    def complete(self) -> bool:
        """The value is finished and nothing but the end of the reply may follow."""
        return self.matcher.is_stopped()


def grammar_for(params: Any) -> str | None:
    """The grammar a request's `GenParams` ask for, or None for free text."""
    if params.json_schema is not None:
        return json_schema_grammar(params.json_schema.get("schema") or {})
    if params.json_mode:
        return json_object_grammar()
    return None
