"""Why slmforge batches ONNX decoding itself: B greedy sequences decoded at once on the int4
`small` model, in one process without HTTP, three ways:

- `sequential`: one `og.Generator` after another (`OnnxEngine(decoder="genai")`, one request
  at a time);
- `og-engine`: onnxruntime-genai 0.18's `og.Engine` with `max_batch_size` B (on CPU it batches
  statically: the continuous, paged-attention path needs a CUDA fp16/bf16 build);
- `slmforge`: `OnnxEngine(max_batch=B)`, the continuous batching of `runtime/onnx_batch.py`.

Prints aggregate tokens/s per B, and the time to first token of a request that arrives while
B-1 others are half-way through (continuous batching admits it at the next step; a static
batch makes it wait for the whole batch). Every sequence decodes exactly `--tokens` tokens.

    .venv/bin/python benchmarks/batch_decode.py
    .venv/bin/python benchmarks/batch_decode.py --batch 1,8 --tokens 32
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import islice

import numpy as np
from bench_models import log, onnx_model
from serve_load import PROMPTS


def sequential(engine, prompts: list[list[int]], tokens: int) -> float:
    from slmforge.runtime.engine import GenParams
    from slmforge.runtime.sampling import Sampler, sampled_tokens

    start = time.perf_counter()
    for prompt in prompts:
        with engine.session(None, len(prompt) + tokens) as forward:
            for _ in islice(sampled_tokens(forward, prompt, Sampler(GenParams())), tokens):
                pass
    return time.perf_counter() - start


def submit(engine, prompt: list[int], tokens: int):
    from slmforge.runtime.engine import GenParams
    from slmforge.runtime.sampling import Sampler

    return engine.batcher.submit(prompt, Sampler(GenParams()), None, tokens, set())


def batched(engine, prompts: list[list[int]], tokens: int) -> float:
    with engine.batcher.held():
        sequences = [submit(engine, p, tokens) for p in prompts]
        start = time.perf_counter()
    for sequence in sequences:
        assert len(list(sequence.tokens())) == tokens
    return time.perf_counter() - start


def batched_late_ttft(engine, prompts: list[list[int]], tokens: int) -> float:
    with engine.batcher.held():
        sequences = [submit(engine, p, tokens) for p in prompts[1:]]
    list(islice(sequences[0].tokens(), tokens // 2))
    start = time.perf_counter()
    late = submit(engine, prompts[0], tokens)
    next(late.tokens())
    ttft = time.perf_counter() - start
    for sequence in [*sequences, late]:  # let them finish before anything else is measured
        list(sequence.tokens())
    return ttft


def og_engine(folder, batch: int):
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.overlay(json.dumps({"engine": {"static_batching": {"max_batch_size": batch}}}))
    return og, og.Engine(og.Model(config))


def og_request(og, engine, prompt: list[int], tokens: int):
    request = engine.create_request()
    options = og.TurnOptions(request)
    options.set_temperature(0.0)
    options.set_min_generated_tokens(tokens)
    options.set_max_generated_tokens(tokens)
    request.begin_turn(np.asarray(prompt, dtype=np.int32), options)
    return request


def og_batched(folder, prompts: list[list[int]], tokens: int) -> tuple[float, float]:
    """Aggregate time of a batch, and the late arrival's time to first token."""
    og, engine = og_engine(folder, len(prompts))
    buffer = engine.create_event_buffer(4 * len(prompts))
    start = time.perf_counter()
    requests = [og_request(og, engine, p, tokens) for p in prompts]
    while engine.has_pending_requests():
        engine.run(buffer)
    wall = time.perf_counter() - start
    del requests
    requests = [og_request(og, engine, p, tokens) for p in prompts[1:]]
    first_done, late, late_start = 0, None, 0.0
    while True:
        engine.run(buffer)
        for i in range(len(buffer)):
            event = buffer[i]
            if late is not None and event.request is late and event.token is not None:
                return wall, time.perf_counter() - late_start
            if event.request is requests[0]:
                first_done += 1
        if late is None and first_done >= tokens // 2:
            late_start = time.perf_counter()
            late = og_request(og, engine, prompts[0], tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", default="1,4,8,16")
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    from slmforge.runtime.onnx_engine import OnnxEngine

    folder = onnx_model("int4")
    single = OnnxEngine(folder, decoder="genai")
    encode = single.tokenizer
    rows = []
    for batch in [int(b) for b in args.batch.split(",")]:
        prompts = [encode(PROMPTS[i % len(PROMPTS)])["input_ids"] for i in range(batch)]
        total = batch * args.tokens
        log(f"batch {batch}")
        engine = OnnxEngine(folder, max_batch=max(batch, 2))
        batched(engine, prompts[:1], 4)  # warm-up
        ours = batched(engine, prompts, args.tokens)
        ours_late = batched_late_ttft(engine, prompts, args.tokens) if batch > 1 else None
        engine.batcher.close()
        theirs, theirs_late = (
            og_batched(folder, prompts, args.tokens) if batch > 1 else (None, None)
        )
        serial = sequential(single, prompts, args.tokens)
        rows.append((batch, total / serial, theirs and total / theirs, total / ours))
        rows[-1] += (theirs_late, ours_late)
    print(
        f"batched decode, int4 small llama, {args.tokens} tokens per sequence, aggregate tokens/s"
    )
    late_header = "late TTFT og / slmforge"
    print(f"{'B':>3} {'sequential':>10} {'og-engine':>10} {'slmforge':>10} {late_header:>26}")
    for batch, serial, theirs, ours, theirs_late, ours_late in rows:
        late = f"{theirs_late * 1000:.0f} / {ours_late * 1000:.0f} ms" if ours_late else "-"
        theirs_text = f"{theirs:.1f}" if theirs else "-"
        print(f"{batch:>3} {serial:>10.1f} {theirs_text:>10} {ours:>10.1f} {late:>26}")


if __name__ == "__main__":
    main()
