"""Batched forward passes over the decoder of an ONNX Runtime GenAI folder (`BatchModel` of
`runtime/batching.py`).

ONNX Runtime GenAI's own `og.Engine` batches only statically on CPU (its continuous path needs
paged attention, which the builder emits for CUDA fp16/bf16 only), so a request that arrives
while a batch runs waits for the whole batch; it also samples with its own sampler and has no
per-request adapters (measured in docs/benchmarks.md). This module drives the same
`model.onnx` with onnxruntime directly instead:

- The builder's decoders use GroupQueryAttention, which takes each row's length from the
  attention mask's row sums and writes a new token's key and value at that row's own position
  in a buffer shared by past and present. Rows of different lengths therefore decode in one
  pass: a row's cache holds its tokens at positions 0..length-1, and attention never reads
  what lies after them.
- Sequences that share an adapter form a `_Group`: rows 0..n-1 of per-layer key and value
  buffers [rows, kv_heads, capacity, head_size], bound as both past and present, so a step
  copies no cache. A finished sequence's row is refilled with the group's last row, so the
  rows stay contiguous and a pass runs on `buffer[:n]`. Buffers grow by doubling.
- Each `.onnx_adapter` file's tensors are bound as the graph's LoRA inputs (as ONNX Runtime
  GenAI does); groups with different adapters run one pass each per step.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slmforge.errors import RunError
from slmforge.runtime.prefix_cache import PrefixCache, concatenated

ROWS_START = 4  # rows a group's buffers start with; doubles up to the batch size
CAPACITY_START = 256  # tokens per row the buffers start with; doubles up to the context
_DECODER_INPUTS = {"input_ids", "attention_mask", "past_key_names", "past_value_names"}
ALLOW_SPINNING = "session.intra_op.allow_spinning"
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_INT_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def batch_support(folder: Path, genai: dict[str, Any]) -> str | None:
    """None when this folder's decoder can run batched here, else the reason it cannot."""
    import onnx

    decoder = genai["model"]["decoder"]
    providers = decoder.get("session_options", {}).get("provider_options") or []
    names = [name for entry in providers for name in entry]
    if names:
        return f"batched decoding runs on CPU, and this model is built for {', '.join(names)}"
    extra = sorted(set(decoder.get("inputs", {})) - _DECODER_INPUTS)
    if extra:
        return f"its decoder also takes {', '.join(extra)}"
    graph = onnx.load(str(folder / decoder["filename"]), load_external_data=False).graph
    if not any(node.op_type == "GroupQueryAttention" for node in graph.node):
        return "its decoder has no GroupQueryAttention, which rows of different lengths need"
    return None


@dataclass
class _Slot:
    group: _Group
    row: int


@dataclass
class _Group:
    """The sequences of one adapter (None = the base model), row by row."""

    adapter: str | None
    keys: list[np.ndarray] = field(default_factory=list)  # per layer
    values: list[np.ndarray] = field(default_factory=list)
    slots: list[_Slot] = field(default_factory=list)  # by row
    lengths: list[int] = field(default_factory=list)  # tokens in each row's cache
    rows: int = 0
    capacity: int = 0
    rows_start: int = ROWS_START
    stepper: _Stepper | None = None  # its one-token passes, bindings kept between steps


def _grown(current: int, needed: int, start: int, limit: int) -> int:
    size = max(current, start)
    while size < needed:
        size *= 2
    return max(min(size, limit), needed)


class OnnxBatchModel:
    def __init__(
        self,
        folder: Path,
        genai: dict[str, Any],
        adapters: dict[str, str],
        max_batch: int,
        context_length: int,
    ) -> None:
        import onnxruntime as ort

        decoder = genai["model"]["decoder"]
        options = ort.SessionOptions()
        options.log_severity_level = 3  # LoRA inputs with defaults are expected, not a warning
        # Idle pool threads sleep instead of spinning: a decode step is ~300 short ops, each
        # ending on a barrier, and a spinning pool loses a core to any other process for whole
        # time slices. Measured on 2 cores (0.5B int4, docs/benchmarks.md): the same speed on a
        # quiet machine, 1.7x faster beside one busy process.
        options.add_session_config_entry(ALLOW_SPINNING, "0")
        for key, value in decoder.get("session_options", {}).items():
            if key in ("intra_op_num_threads", "inter_op_num_threads"):
                setattr(options, key, int(value))
        self.session = ort.InferenceSession(
            str(folder / decoder["filename"]), options, providers=["CPUExecutionProvider"]
        )
        inputs, outputs = decoder["inputs"], decoder["outputs"]
        self.input_ids, self.attention_mask = inputs["input_ids"], inputs["attention_mask"]
        self.logits = outputs["logits"]
        self.cache_names = [
            (inputs[f"past_{kind}_names"] % layer, outputs[f"present_{kind}_names"] % layer)
            for layer in range(decoder["num_hidden_layers"])
            for kind in ("key", "value")
        ]
        types = {i.name: i.type for i in self.session.get_inputs()}
        self.ids_dtype = _INT_DTYPES[types[self.input_ids]]
        self.mask_dtype = _INT_DTYPES[types[self.attention_mask]]
        self.cache_dtype = _DTYPES[types[self.cache_names[0][0]]]
        logits = {output.name: output for output in self.session.get_outputs()}[self.logits]
        self.logits_dtype = _DTYPES[logits.type]
        vocab = logits.shape[-1]  # the graph's own width; genai_config's when it is symbolic
        self.vocab_size = vocab if isinstance(vocab, int) else int(genai["model"]["vocab_size"])
        self.kv_heads, self.head_size = decoder["num_key_value_heads"], decoder["head_size"]
        self.max_batch, self.context_length = max_batch, context_length
        # Adapter tensors are bound as inputs (run_with_iobinding ignores RunOptions' active
        # adapters); the base runs on the graph's zero defaults.
        self.adapter_inputs: dict[str | None, dict[str, Any]] = {None: {}}
        for name, path in adapters.items():
            parameters = ort.AdapterFormat.read_adapter(str(path)).get_parameters()
            self.adapter_inputs[name] = dict(parameters)
        self.groups: dict[str | None, _Group] = {}
        self.prefix_cache: PrefixCache | None = None  # set by the engine when it keeps one

    def open(self, prompt: list[int], adapter: str | None) -> tuple[_Slot, np.ndarray]:
        group = self.groups.setdefault(adapter, _Group(adapter))
        row = len(group.slots)
        logits = self._prefill(group, prompt)
        slot = _Slot(group, row)
        group.slots.append(slot)
        return slot, logits[-1]

    @contextmanager
    def single(self, adapter: str | None) -> Iterator[Callable[[list[int]], np.ndarray]]:
        """One sequence in a cache of its own, outside the batch's groups: the engine's
        one-request path. Yields `forward(new_ids) -> logits of the last position`; safe beside
        a running batch scheduler (ONNX Runtime sessions run concurrently)."""
        group = _Group(adapter, rows_start=1)

        def forward(new_ids: list[int]) -> np.ndarray:
            if not group.lengths:
                return self._prefill(group, new_ids)[-1]
            for token in new_ids:
                logits = self._step_group(group, [token])
            return logits[0]

        yield forward

    def sequence_logits(self, ids: list[int], adapter: str | None) -> np.ndarray:
        """Logits at every position of `ids` (one pass in a cache of its own)."""
        return self._prefill(_Group(adapter, rows_start=1), ids, cached=False)

    def _prefill(self, group: _Group, prompt: list[int], cached: bool = True) -> np.ndarray:
        """Runs `prompt` into the group's next free row; returns the logits of the positions it
        computed [n, vocab] (after the blocks the prefix cache supplied, if any)."""
        row = len(group.lengths)
        self._reserve(group, row + 1, len(prompt))
        cache = self.prefix_cache if cached else None
        reused = self._load_prefix(group, row, prompt) if cache is not None else 0
        ids = np.asarray([prompt[reused:]], dtype=self.ids_dtype)
        mask = np.ones((1, len(prompt)), dtype=self.mask_dtype)  # cached + new positions
        logits = self._run(group, row, ids, mask)
        group.lengths.append(len(prompt))
        if cache is not None:
            buffers = self._buffers(group)
            cache.store(
                group.adapter,
                prompt,
                reused // cache.block,
                lambda start, end: [b[row, :, start:end].copy() for b in buffers],
            )
        return logits[0]

    def _load_prefix(self, group: _Group, row: int, prompt: list[int]) -> int:
        """Copies the cached blocks that open `prompt` into the row; returns their length."""
        assert self.prefix_cache is not None
        blocks = self.prefix_cache.lookup(group.adapter, prompt)
        if not blocks:
            return 0
        length = len(blocks) * self.prefix_cache.block
        for buffer, array in zip(self._buffers(group), concatenated(blocks, 1), strict=True):
            buffer[row, :, :length] = array
        return length

    def _buffers(self, group: _Group) -> list[np.ndarray]:
        """The group's cache buffers in the graph's order (key, value of each layer)."""
        return [b for pair in zip(group.keys, group.values, strict=True) for b in pair]

    def step(self, slots: list[_Slot], tokens: list[int]) -> list[np.ndarray]:
        out: list[Any] = [None] * len(slots)
        members: dict[int, list[int]] = {}  # id(group) -> indexes into slots
        for index, slot in enumerate(slots):
            members.setdefault(id(slot.group), []).append(index)
        for indexes in members.values():
            group = slots[indexes[0]].group
            if len(indexes) != len(group.slots):
                raise RunError("a batched step must feed every open sequence of its adapter")
            by_row = [0] * len(indexes)
            for index in indexes:
                by_row[slots[index].row] = tokens[index]
            logits = self._step_group(group, by_row)
            for index in indexes:
                out[index] = logits[slots[index].row]
        return out

    def _step_group(self, group: _Group, tokens: list[int]) -> np.ndarray:
        """Feeds one token to each row of the group; returns each row's logits [rows, vocab]."""
        lengths = group.lengths
        self._reserve(group, len(tokens), max(lengths) + 1)
        if group.stepper is None:
            group.stepper = _Stepper(self, group)
        logits = group.stepper(tokens, lengths)
        group.lengths = [length + 1 for length in lengths]
        return logits

    def close(self, slot: _Slot) -> None:
        group, row = slot.group, slot.row
        last = len(group.slots) - 1
        if row != last:  # keep rows contiguous: the last row moves into the freed one
            length = group.lengths[last]
            for buffer in (*group.keys, *group.values):
                buffer[row, :, :length] = buffer[last, :, :length]
            moved = group.slots[last]
            moved.row = row
            group.slots[row], group.lengths[row] = moved, length
        group.slots.pop()
        group.lengths.pop()
        if not group.slots:  # frees the group's cache
            del self.groups[group.adapter]

    def reset(self) -> None:
        self.groups.clear()

    def _reserve(self, group: _Group, rows: int, length: int) -> None:
        if rows <= group.rows and length <= group.capacity:
            return
        new_rows = _grown(group.rows, rows, group.rows_start, max(self.max_batch, rows))
        capacity = _grown(group.capacity, length, CAPACITY_START, self.context_length)
        used = len(group.lengths)
        shape = (new_rows, self.kv_heads, capacity, self.head_size)
        layers = len(self.cache_names) // 2
        for buffers in (group.keys, group.values):
            old = list(buffers) or [None] * layers  # a copy: `buffers[:] =` refills this list
            buffers[:] = [lazy_zeros(shape, self.cache_dtype) for _ in range(layers)]
            for grown, previous in zip(buffers, old, strict=True):
                if previous is not None:
                    grown[:used, :, : previous.shape[2]] = previous[:used]
        group.rows, group.capacity = new_rows, capacity

    def _run(self, group: _Group, row: int, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One pass over rows row..row+len(ids)-1 of the group's cache; returns the logits."""
        binding = self.session.io_binding()
        binding.bind_output(self.logits, "cpu")
        binding.bind_cpu_input(self.input_ids, ids)
        binding.bind_cpu_input(self.attention_mask, mask)
        self.bind_cache(binding, group, row, len(ids))
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()

    def bind_cache(self, binding: Any, group: _Group, row: int, rows: int) -> None:
        """Binds rows row..row+rows-1 of the group's cache as past and present (one buffer, so
        a pass copies no cache) and the group's adapter tensors."""
        shape = (rows, self.kv_heads, group.capacity, self.head_size)
        for (past, present), buffer in zip(self.cache_names, self._buffers(group), strict=True):
            address = buffer[row : row + rows].ctypes.data  # contiguous: whole leading rows
            binding.bind_input(past, "cpu", 0, self.cache_dtype, shape, address)
            binding.bind_output(present, "cpu", 0, self.cache_dtype, shape, address)
        for name, value in self.adapter_inputs[group.adapter].items():
            binding.bind_ortvalue_input(name, value)


def lazy_zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Zeros in an anonymous mapping of their own: the kernel supplies each page on first touch
    and takes them all back when the array is freed.

    Why not `np.zeros`: it takes a cache buffer (megabytes per layer on a 3.8B model) from
    malloc, and once glibc has raised its mmap threshold past that size a freed buffer returns
    to the heap, where the next one is zeroed (so made resident) whole. Every sequence then
    left its cache's full size behind: +75 MiB per answer on the 3.8B shape (docs/benchmarks.md)
    although a sequence touches only the positions it fills.
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes == 0:
        return np.zeros(shape, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype).reshape(shape)


class _Stepper:
    """One-token passes over a group's rows with an IO binding kept between steps.

    Why: a fresh binding per step costs two bind calls per layer, a logits allocation and a
    copy, a measurable share of a small model's per-token time (docs/benchmarks.md, decode
    speed). The cache, adapter and output buffers are bound again only when the group's row
    count or cache size changes; otherwise a step writes the tokens and the attention mask
    into bound buffers and rebinds only the mask, whose width grows by one each step (its row
    sums tell GroupQueryAttention how many cached tokens each row reads).
    """

    def __init__(self, model: OnnxBatchModel, group: _Group) -> None:
        self.model, self.group = model, group
        self.binding: Any = None
        self.bound = (0, 0, 0)  # rows fed, rows and capacity of the cache buffers

    def __call__(self, tokens: list[int], lengths: list[int]) -> np.ndarray:
        model, group = self.model, self.group
        rows, width = len(tokens), max(lengths) + 1
        if self.bound != (rows, group.rows, group.capacity):
            self._bind(rows)
        self.ids[:, 0] = tokens
        mask = self.mask[: rows * width].reshape(rows, width)
        # row b attends to its lengths[b] cached tokens and the new one
        np.less_equal(self.positions[:width][None, :], np.asarray(lengths)[:, None], out=mask)
        self.binding.bind_input(
            model.attention_mask, "cpu", 0, model.mask_dtype, mask.shape, mask.ctypes.data
        )
        model.session.run_with_iobinding(self.binding)
        return self.logits[:, -1].copy()  # the buffer is the next step's output

    def _bind(self, rows: int) -> None:
        model, group = self.model, self.group
        self.ids = np.zeros((rows, 1), dtype=model.ids_dtype)
        self.logits = np.zeros((rows, 1, model.vocab_size), dtype=model.logits_dtype)
        self.mask = np.zeros(rows * group.capacity, dtype=model.mask_dtype)
        self.positions = np.arange(group.capacity)
        binding = model.session.io_binding()
        binding.bind_input(
            model.input_ids, "cpu", 0, model.ids_dtype, self.ids.shape, self.ids.ctypes.data
        )
        binding.bind_output(
            model.logits, "cpu", 0, model.logits_dtype, self.logits.shape, self.logits.ctypes.data
        )
        model.bind_cache(binding, group, 0, rows)
        self.binding = binding
        self.bound = (rows, group.rows, group.capacity)
