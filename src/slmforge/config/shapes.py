"""The public shapes of the model families our users bring, registered by name.

Each entry is the published `config.json` of that model, less what is token-specific (bos, eos
and pad ids come from the tokenizer slmforge trains): hidden size, depth, heads, KV heads,
intermediate size, vocabulary, tied embeddings, RoPE base and scaling, sliding window. `slmforge
models init --like NAME` writes a randomly initialised model of that exact shape, so a pipeline,
a memory fit check or a benchmark can run at real size before anyone downloads gigabytes. Adding
a family member is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slmforge.errors import InputError


@dataclass(frozen=True)
class RealShape:
    name: str
    model_type: str  # also picks the chat format (models/chat.py FORMAT_FOR_ARCH)
    hub_id: str  # where the real weights live, for the user's next step
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> int:
        return int(self.config["num_hidden_layers"])


_QWEN25 = dict(
    hidden_act="silu",
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    sliding_window=32768,
    max_window_layers=21,
    use_sliding_window=False,
    tie_word_embeddings=True,
    attention_dropout=0.0,
    initializer_range=0.02,
)
_LLAMA32 = dict(
    hidden_act="silu",
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
    },
    attention_bias=False,
    mlp_bias=False,
    tie_word_embeddings=True,
    initializer_range=0.02,
)
_PHI3_MINI = dict(
    hidden_act="silu",
    vocab_size=32064,
    hidden_size=3072,
    intermediate_size=8192,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    attention_bias=False,
    initializer_range=0.02,
)
# Phi-3.5-mini's LongRoPE factors, one per rotary frequency pair (head_dim 96 / 2).
_PHI35_LONG_FACTOR = [
    1.0800000429153442, 1.1100000143051147, 1.1399999856948853, 1.340000033378601,
    1.5899999141693115, 1.600000023841858, 1.6200000047683716, 2.620000123977661,
    3.2300000190734863, 3.2300000190734863, 4.789999961853027, 7.400000095367432,
    7.700000286102295, 9.09000015258789, 12.199999809265137, 17.670000076293945,
    24.46000099182129, 28.57000160217285, 30.420001983642578, 30.840002059936523,
    32.590003967285156, 32.93000411987305, 42.320003509521484, 44.96000289916992,
    50.340003967285156, 50.45000457763672, 57.55000305175781, 57.93000411987305,
    58.21000289916992, 60.1400032043457, 62.61000442504883, 62.62000274658203,
    62.71000289916992, 63.1400032043457, 63.1400032043457, 63.77000427246094,
    63.93000411987305, 63.96000289916992, 63.970001220703125, 64.02999877929688,
    64.06999969482422, 64.08000183105469, 64.12000274658203, 64.41000366210938,
    64.4800033569336, 64.51000213623047, 64.52999877929688, 64.83999633789062,
]  # fmt: skip
_PHI35_SHORT_FACTOR = [
    1.0, 1.0199999809265137, 1.0299999713897705, 1.0299999713897705,
    1.0499999523162842, 1.0499999523162842, 1.0499999523162842, 1.0499999523162842,
    1.0499999523162842, 1.0699999332427979, 1.0999999046325684, 1.1099998950958252,
    1.1599998474121094, 1.1599998474121094, 1.1699998378753662, 1.2899998426437378,
    1.339999794960022, 1.679999828338623, 1.7899998426437378, 1.8199998140335083,
    1.8499997854232788, 1.8799997568130493, 1.9099997282028198, 1.9399996995925903,
    1.9899996519088745, 2.0199997425079346, 2.0199997425079346, 2.0199997425079346,
    2.0199997425079346, 2.0199997425079346, 2.0199997425079346, 2.0299997329711914,
    2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914,
    2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914,
    2.0799996852874756, 2.0899996757507324, 2.189999580383301, 2.2199995517730713,
    2.5899994373321533, 2.729999542236328, 2.749999523162842, 2.8399994373321533,
]  # fmt: skip

SHAPES: dict[str, RealShape] = {
    shape.name: shape
    for shape in (
        RealShape(
            "qwen2.5-0.5b",
            "qwen2",
            "Qwen/Qwen2.5-0.5B-Instruct",
            _QWEN25
            | dict(
                hidden_size=896,
                intermediate_size=4864,
                num_hidden_layers=24,
                num_attention_heads=14,
                num_key_value_heads=2,
            ),
        ),
        RealShape(
            "qwen2.5-1.5b",
            "qwen2",
            "Qwen/Qwen2.5-1.5B-Instruct",
            _QWEN25
            | dict(
                hidden_size=1536,
                intermediate_size=8960,
                num_hidden_layers=28,
                num_attention_heads=12,
                num_key_value_heads=2,
            ),
        ),
        RealShape(
            "llama-3.2-1b",
            "llama",
            "meta-llama/Llama-3.2-1B-Instruct",
            _LLAMA32 | dict(num_hidden_layers=16),
        ),
        RealShape(
            "llama-3.2-3b",
            "llama",
            "meta-llama/Llama-3.2-3B-Instruct",
            _LLAMA32
            | dict(
                hidden_size=3072,
                num_hidden_layers=28,
                num_attention_heads=24,
                head_dim=128,
            ),
        ),
        RealShape(
            "phi-3-mini-4k",
            "phi3",
            "microsoft/Phi-3-mini-4k-instruct",
            _PHI3_MINI
            | dict(
                max_position_embeddings=4096,
                original_max_position_embeddings=4096,
                rope_scaling=None,
                sliding_window=2047,
            ),
        ),
        RealShape(
            "phi-3.5-mini",
            "phi3",
            "microsoft/Phi-3.5-mini-instruct",
            _PHI3_MINI
            | dict(
                max_position_embeddings=131072,
                original_max_position_embeddings=4096,
                rope_scaling={
                    "type": "longrope",
                    "long_factor": _PHI35_LONG_FACTOR,
                    "short_factor": _PHI35_SHORT_FACTOR,
                },
                sliding_window=262144,
            ),
        ),
        RealShape(
            "mistral-7b-v0.3",
            "mistral",
            "mistralai/Mistral-7B-Instruct-v0.3",
            dict(
                hidden_act="silu",
                vocab_size=32768,
                hidden_size=4096,
                intermediate_size=14336,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=8,
                head_dim=128,
                max_position_embeddings=32768,
                rms_norm_eps=1e-5,
                rope_theta=1000000.0,
                sliding_window=None,
                tie_word_embeddings=False,
                initializer_range=0.02,
            ),
        ),
    )
}


def get_shape(name: str) -> RealShape:
    try:
        return SHAPES[name]
    except KeyError:
        known = ", ".join(SHAPES)
        raise InputError(f"--like: unknown model {name!r} (known: {known})") from None
