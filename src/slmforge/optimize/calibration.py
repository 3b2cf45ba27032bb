"""Calibration for GPTQ and AWQ: token windows from the user's own data, and a pass over the
model one decoder layer at a time.

Windows: every example of a file `slmforge data` reads is rendered with the model's chat
template (the whole conversation: the domain the model will see), tokenized, and the token
streams joined and cut into `samples` windows of `seq_len` tokens. Nothing is ever downloaded.

The layer pass loads the source in its checkpoint dtype, runs the embedding once per window and
keeps what the first decoder layer receives (its hidden states, position embeddings and mask).
Each layer is then cast to fp32, handed to the algorithm (which hooks its Linear inputs, and may
change its weights), run over every window to give the next layer's inputs, and cast back: the
memory is the model in its own dtype, one layer in fp32 and two sets of window activations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from slmforge import progress
from slmforge.artifacts import sha256_file
from slmforge.errors import InputError


@dataclass(frozen=True)
class Calibration:
    """The windows calibration runs on, and what the manifest records about them."""

    path: Path
    sha256: str
    windows: list[list[int]]
    seq_len: int

    @property
    def tokens(self) -> int:
        return sum(len(window) for window in self.windows)

    def describe(self) -> dict[str, Any]:
        return {
            "data": str(self.path),
            "sha256": self.sha256,
            "samples": len(self.windows),
            "seq_len": self.seq_len,
            "tokens": self.tokens,
        }


def calibration_windows(
    path: Path, tokenizer: Any, samples: int, seq_len: int, context: int
) -> Calibration:
    """`samples` windows of `seq_len` tokens from the chat-rendered examples of `path`.

    Bad data raises InputError/DataError naming file:line; data shorter than asked is used as
    it is, with a warning; a window longer than the model's context is cut to it.
    """
    from slmforge.data.formats import read_examples

    examples = read_examples(path)  # missing file, format and record errors name file:line
    if not examples:
        raise InputError(f"{path}: no examples to calibrate with")
    if not tokenizer.chat_template:
        raise InputError("calibration renders examples with the model's chat template; it has none")
    if seq_len > context:
        progress.warn(
            f"--calibration-seq-len {seq_len} exceeds the model's context; using {context}"
        )
        seq_len = context
    stream: list[int] = []
    for example in examples:
        text = tokenizer.apply_chat_template(example.messages, tokenize=False)
        stream += tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(stream) >= samples * seq_len:
            break
    windows = [stream[start : start + seq_len] for start in range(0, len(stream), seq_len)]
    windows = windows[:samples]
    if len(windows) < samples or len(windows[-1]) < seq_len:
        progress.warn(
            f"{path}: {len(stream)} tokens in {len(examples)} examples give "
            f"{len(windows)} of the {samples} calibration samples of {seq_len} tokens asked; "
            "calibrating on what there is"
        )
    return Calibration(path, sha256_file(path), windows, seq_len)


@dataclass
class LayerInputs:
    """What a decoder layer receives for each window: hidden states [1, T, d] and keywords."""

    hidden: list[torch.Tensor]
    kwargs: list[dict[str, Any]]


class _Captured(Exception):
    """Stops the model's forward once the first decoder layer's inputs are known."""


def _fp32(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.float()
    if isinstance(value, tuple):
        return tuple(_fp32(item) for item in value)
    return value


def decoder_layers(model: Any) -> Any:
    return model.model.layers


def first_layer_inputs(model: Any, windows: list[list[int]]) -> LayerInputs:
    """Run the model up to its first decoder layer for each window (embedding, rotary, mask)."""
    inputs = LayerInputs([], [])

    def capture(_module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        inputs.hidden.append(hidden.float())
        kept = {k: _fp32(v) for k, v in kwargs.items() if k not in ("past_key_values", "use_cache")}
        inputs.kwargs.append(kept)
        raise _Captured

    handle = decoder_layers(model)[0].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.inference_mode():
            for window in windows:
                with contextlib.suppress(_Captured):
                    model(input_ids=torch.tensor([window]), use_cache=False)
    finally:
        handle.remove()
    return inputs


def run_layer(layer: Any, inputs: LayerInputs) -> list[torch.Tensor]:
    """The layer's output for every window."""
    outputs = []
    with torch.inference_mode():
        for hidden, kwargs in zip(inputs.hidden, inputs.kwargs, strict=True):
            out = layer(hidden, **kwargs)
            outputs.append(out[0] if isinstance(out, tuple) else out)
    return outputs


def linears(layer: Any) -> list[tuple[str, torch.nn.Linear]]:
    """The layer's Linear modules by name relative to it, in execution order of definition."""
    return [(n, m) for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)]


def capture_linear_inputs(
    layer: Any, inputs: LayerInputs, on_input: Callable[[str, torch.Tensor], None]
) -> None:
    """Run the layer over every window, calling `on_input(name, x [tokens, in] fp32)` with what
    each of its Linear modules receives."""
    handles = []
    for name, module in linears(layer):

        def hook(_module: Any, args: tuple, name: str = name) -> None:
            x = args[0]
            on_input(name, x.reshape(-1, x.shape[-1]).float())

        handles.append(module.register_forward_pre_hook(hook))
    try:
        run_layer(layer, inputs)
    finally:
        for handle in handles:
            handle.remove()


def layer_by_layer(
    model: Any, windows: list[list[int]], what: str
) -> Iterator[tuple[str, Any, LayerInputs]]:
    """Yield (name, layer in fp32, its inputs) for each decoder layer in order; after the
    caller is done with a layer (it may have changed its weights), its outputs become the next
    layer's inputs and it goes back to its own dtype."""
    inputs = first_layer_inputs(model, windows)
    layers = decoder_layers(model)
    with progress.task(f"Calibrating {what} on {len(windows)} samples", total=len(layers)) as task:
        for index, layer in enumerate(layers):
            dtype = next(layer.parameters()).dtype
            layer.float()
            yield f"model.layers.{index}", layer, inputs
            inputs = LayerInputs(run_layer(layer, inputs), inputs.kwargs)
            layer.to(dtype)
            task.advance()


def load_source(source: Path, trust_remote_code: bool) -> Any:
    """The source model in its checkpoint dtype, for one calibration pass. Adapters stay out:
    the builder keeps LoRA MatMuls apart from the base weights calibration quantizes."""
    from slmforge.models.load import load_causal_lm

    model = load_causal_lm(source, dtype="auto", trust_remote_code=trust_remote_code)
    model.config.use_cache = False
    return model
