"""The fine-tuning method and objective registries drive the config, the hooks and the jobs API."""

from __future__ import annotations

import typing

import pytest
from pydantic import ValidationError

from slmforge.config.finetune import FinetuneConfig
from slmforge.config.methods import FINETUNE_METHODS, OBJECTIVES, methods_help
from slmforge.errors import ConfigError
from slmforge.jobs.spec import request_methods
from slmforge.train.memory import trainable_params
from slmforge.train.methods import HOOKS, get_method
from slmforge.train.shape import ModelShape


def test_every_registered_method_has_training_hooks_and_no_hooks_are_unregistered() -> None:
    assert set(HOOKS) == set(FINETUNE_METHODS)
    for name, traits in FINETUNE_METHODS.items():
        assert get_method(name).saves_adapter is traits.adapter


def test_config_choices_come_from_the_registries() -> None:
    method = FinetuneConfig.model_fields["method"].annotation
    objective = FinetuneConfig.model_fields["objective"].annotation
    assert set(typing.get_args(method)) == set(FINETUNE_METHODS)
    assert set(typing.get_args(objective)) == set(OBJECTIVES)
    with pytest.raises(ValidationError, match="lora"):
        FinetuneConfig(model="m", data="d.jsonl", out="o", method="prefix-tuning")
    assert "qlora (CUDA only)" in methods_help()


def test_unknown_method_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="not one of lora, qlora, dora, full"):
        get_method("ia3")


def test_jobs_api_method_types_map_objectives_and_methods() -> None:
    kinds = request_methods()
    assert kinds["supervised"] == ("lora", "sft")
    for name in FINETUNE_METHODS:
        assert kinds[name] == (name, "sft")


def test_merge_option_is_refused_for_a_method_without_adapter() -> None:
    with pytest.raises(ValidationError, match=r"adapter methods \(lora, qlora, dora\)"):
        FinetuneConfig(model="m", data="d.jsonl", out="o", method="full", merge=True)


def test_memory_traits_follow_the_registry() -> None:
    shape = ModelShape(
        model_type="llama", hidden=64, layers=2, heads=4, kv_heads=4, head_dim=16,
        intermediate=128, vocab=100, tied=False, params=200_000, context=256, dtype="fp32",
    )  # fmt: skip
    lora = trainable_params(shape, "lora", rank=4)
    assert trainable_params(shape, "dora", rank=4) == lora + 2 * (4 * 64)  # magnitude vectors
    assert trainable_params(shape, "full", rank=4) == shape.params
