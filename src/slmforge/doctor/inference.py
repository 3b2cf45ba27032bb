"""Memory of chat, serve and eval with the ONNX model `slmforge optimize` builds, from config.json.

All three run the model in one process through `runtime/onnx_batch.py` (ONNX Runtime's CPU
provider) with transformers' tokenizer; on CPU their peak is the sum of:
  runtime      python, the CLI, transformers (its tokenizer imports torch) and onnxruntime
               before the session opens: 288 MiB measured for chat; serve (fastapi, uvicorn)
               and eval (its metrics) add a few MiB
  weights      what the session keeps. ONNX Runtime maps model.onnx.data and, as the session
               opens, repacks every MatMulNBits weight into MLAS's layout for int8 compute
               (accuracy level 4, the builder's CPU default): the packed bits plus an fp32 scale
               and an fp32 block sum per block of 32, 0.75 bytes per int4 weight; the mapped
               scales stay resident beside it (0.125 bytes per weight). A tied model's embedding
               is a GatherBlockQuantized over the LM head's int4 weights, which the session
               copies (reshaped) too: 0.5 bytes per embedding weight. An untied model's fp32
               embedding is a Gather over mapped pages, of which only the rows looked up become
               resident (not counted). Measured as the session's growth: 3,138 MiB for
               Phi-3-mini (3,136 estimated with the session's own 30 MiB), 511 MiB for
               Qwen2.5-0.5B (507).
  adapter      one switchable LoRA adapter, its fp32 tensors read whole (rank --lora-r)
  kv_cache     fp32 keys and values of one `context`-token sequence (pages are resident only
               where written, so a short chat holds less)
  activations  the prompt's pass over `context` tokens: fp32 logits for every prompt position
               (the output and its numpy copy) and the largest layer's working set
Measured against the peak RSS of each stage of `benchmarks/real_size.py` (docs/benchmarks.md).
It is one sequence's peak: on the Phi-3 shape each further answer of a long run (eval's rows)
left ~75 MiB more resident in native memory (not numpy, not the ONNX Runtime arena), which this
does not count. Other devices and float precisions keep the weights as stored, in their I/O
dtype; the CUDA context's share is a guess, not measured here.
"""

from __future__ import annotations

from slmforge.train.memory import DTYPE_BYTES, MIB, Estimate, trainable_params
from slmforge.train.shape import ModelShape

INFERENCE_STAGES = ("chat", "serve", "eval")
# the process with onnxruntime (288 MiB measured before chat's session opens); + a CUDA context
RUNTIME = {"cpu": 300 * MIB, "mps": 300 * MIB, "cuda": 812 * MIB}
_SESSION = 30 * MIB  # graph, allocation plan, thread pools of one session
_BLOCK = 32  # int4/int8 quantization block of the ONNX builder (one scale per block)


def _quantized_weights(shape: ModelShape, bits: int, device: str) -> int:
    """Resident bytes of a MatMulNBits model's weights (see the module's docstring)."""
    matmul = shape.layer_linear_params + (shape.head_params or shape.embedding_params)
    scale = 4 / _BLOCK  # one fp32 scale per block
    if device != "cpu":  # as stored, and the float embedding in fp16
        embedding = 0 if shape.tied else shape.embedding_params * 2
        return int(matmul * (bits / 8 + scale)) + embedding
    weights = int(matmul * (bits / 8 + 2 * scale + scale))  # repacked with block sums, scales
    if shape.tied:
        weights += int(shape.embedding_params * bits / 8)  # the gather's copy of the head
    return weights


def inference_estimate(
    shape: ModelShape, precision: str, device: str, context: int, lora_r: int = 16
) -> Estimate:
    """One sequence of `context` tokens (prompt and reply) with an ONNX Runtime model of
    `precision` and one switchable LoRA adapter of rank `lora_r`."""
    io_bytes = 4 if device == "cpu" and precision in ("fp32", "int4", "int8") else 2
    if precision in ("int4", "int8"):
        weights = _quantized_weights(shape, 4 if precision == "int4" else 8, device)
    else:
        weights = shape.params * DTYPE_BYTES[precision]
    kv_cache = 2 * shape.layers * shape.kv_heads * shape.head_dim * context * io_bytes
    logits = 2 * context * shape.vocab * 4
    attention = shape.heads * context * context * 4  # one layer's attention probabilities
    layer = context * (3 * shape.intermediate + 4 * shape.hidden) * io_bytes
    adapter = trainable_params(shape, "lora", lora_r) * 4
    return Estimate(
        {
            "runtime": RUNTIME.get(device, RUNTIME["cpu"]) + _SESSION,
            "weights": weights,
            "adapter": adapter,
            "kv_cache": kv_cache,
            "activations": logits + attention + layer,
        }
    )
