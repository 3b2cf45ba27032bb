"""Constrained decoding with llguidance: whatever the logits say, a complete reply is JSON that
matches the schema; a schema llguidance cannot compile is a clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
from jsonschema import validate

from slmforge.errors import InputError
from slmforge.runtime.engine import GenParams
from slmforge.runtime.grammar import (
    GrammarConstraint,
    check_grammar,
    grammar_for,
    grammar_tokenizer,
    json_schema_grammar,
)
from slmforge.runtime.sampling import Sampler

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 8},
        "days": {"type": "integer", "minimum": 1, "maximum": 30},
        "tags": {"type": "array", "items": {"enum": ["food", "art"]}, "maxItems": 2},
    },
    "required": ["city", "days", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def _decode_randomly(
    tokenizer, params: GenParams, seed: int, steps: int = 400, bias: dict[int, float] | None = None
) -> tuple[str, bool]:
    """Random logits drawn at temperature 1: the worst possible model (`bias` added to some)."""
    end = tokenizer.eos_token_id
    constraint = GrammarConstraint(
        grammar_tokenizer(tokenizer, len(tokenizer), [end]), grammar_for(params)
    )
    sampler = Sampler(params, constraint)
    rng = np.random.default_rng(seed)
    ids = []
    for _ in range(steps):
        logits = rng.normal(size=len(tokenizer) + 7).astype(np.float32)
        for token_id, extra in (bias or {}).items():
            logits[token_id] += extra
        sampled = sampler.pick(logits)
        if sampled.token_id == end:
            return tokenizer.decode(ids), True
        ids.append(sampled.token_id)
        if sampled.ends:
            return tokenizer.decode(ids), True
    return tokenizer.decode(ids), False


@pytest.mark.parametrize("seed", range(6))
def test_a_random_model_still_returns_json_matching_the_schema(tokenizer, seed) -> None:
    params = GenParams(temperature=1.0, seed=seed, json_schema={"name": "trip", "schema": SCHEMA})
    text, complete = _decode_randomly(tokenizer, params, seed)
    assert complete, text
    validate(json.loads(text), SCHEMA)


def test_json_object_mode_returns_an_object(tokenizer) -> None:
    # json_object bounds nothing, so a random model needs a nudge to close what it opens
    closing = {i: 6.0 for t, i in tokenizer.get_vocab().items() if tokenizer.decode([i]) in '"}'}
    for seed in range(3):
        params = GenParams(temperature=1.0, json_mode=True, seed=seed)
        text, complete = _decode_randomly(tokenizer, params, seed, bias=closing)
        assert complete and isinstance(json.loads(text), dict), text


def test_rows_past_the_vocabulary_are_never_allowed(tokenizer) -> None:
    constraint = GrammarConstraint(
        grammar_tokenizer(tokenizer, len(tokenizer), [tokenizer.eos_token_id]),
        json_schema_grammar(SCHEMA),
    )
    mask = constraint.allowed_mask(len(tokenizer) + 64)
    assert mask.any() and not mask[len(tokenizer) :].any()
    assert mask[tokenizer.convert_tokens_to_ids("{")] if "{" in tokenizer.get_vocab() else True
    assert grammar_for(GenParams()) is None


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ({"type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=x)y"}}},
         "look-around"),
        ({"type": "objekt"}, "Invalid type: objekt"),
        ({"type": "string", "minLength": 5, "maxLength": 2}, "Unsatisfiable"),
    ],
)  # fmt: skip
def test_a_schema_the_engine_cannot_use_is_an_input_error(tokenizer, schema, says) -> None:
    wrapped = grammar_tokenizer(tokenizer, len(tokenizer), [tokenizer.eos_token_id])
    with pytest.raises(InputError, match=f"(?s)response_format: .*{says}"):
        check_grammar(json_schema_grammar(schema), wrapped, "response_format")
