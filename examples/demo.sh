#!/usr/bin/env bash
# The slmforge journey on a tiny model built here and slmforge's own sample data.
# Every line is a command a user would type; artifacts land in demo-out/ (re-runs replace them).
set -euo pipefail
cd "$(dirname "$0")/.."
SLMFORGE="${SLMFORGE:-.venv/bin/slmforge}"
OUT="${DEMO_OUT:-demo-out}"
STEPS="${DEMO_STEPS:-100}"
mkdir -p "$OUT"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "1. Build a tiny Phi-3-style model (tokenizer trained here, weights briefly pretrained)"
run "$SLMFORGE" models tiny --arch phi3 --out "$OUT/base" --force
run "$SLMFORGE" models info "$OUT/base"

step "2. Data: sample prompt/response pairs -> chat messages -> validated -> split"
run "$SLMFORGE" data sample --out "$OUT/data/travel.jsonl" --force
run "$SLMFORGE" data convert "$OUT/data/travel.jsonl" --out "$OUT/data/travel_chat.jsonl" \
  --system-prompt "You are a helpful travel assistant." --force
run "$SLMFORGE" data validate "$OUT/data/travel_chat.jsonl" --tokenizer "$OUT/base" --max-seq-len 256
run "$SLMFORGE" data split "$OUT/data/travel_chat.jsonl" --out-dir "$OUT/data/split" \
  --validation 0.1 --test 0.1 --seed 7 --force
run "$SLMFORGE" data stats "$OUT/data/split/train.jsonl" --tokenizer "$OUT/base"

step "3. Fine-tune a LoRA adapter (assistant-only loss), then merge it"
run "$SLMFORGE" finetune --model "$OUT/base" --data "$OUT/data/split/train.jsonl" \
  --eval-data "$OUT/data/split/validation.jsonl" --method lora --max-steps "$STEPS" \
  --target-modules all-linear --lr 5e-3 --batch-size 8 --packing --max-seq-len 256 \
  --out "$OUT/adapter" --force
run "$SLMFORGE" merge --adapter "$OUT/adapter" --out "$OUT/merged" --force

step "4. Optimize: int4 ONNX base + the LoRA as a switchable .onnx_adapter, verified vs PyTorch"
# A 1M-parameter model flips more argmaxes under int4 than a real one: the demo accepts 80%
# next-token agreement; the default bar (90%) is meant for real models.
run "$SLMFORGE" optimize --model "$OUT/base" --adapter travel="$OUT/adapter" --precision int4 \
  --verify-data "$OUT/data/split/test.jsonl" --min-agreement 0.8 --out "$OUT/onnx-int4" --force

step "5. Ask the fine-tuned model: PyTorch merged, then ONNX int4 with the travel adapter"
echo "What should I pack for a trip to Lisbon?" | run "$SLMFORGE" chat "$OUT/merged" --max-tokens 48
echo "What should I pack for a trip to Lisbon?" | run "$SLMFORGE" chat "$OUT/onnx-int4+travel" --max-tokens 48

step "6. Serve the ONNX model with its adapter over the OpenAI API, and ask it from a client"
PORT="${DEMO_PORT:-$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
printf '$ %s\n' "$SLMFORGE serve $OUT/onnx-int4 --port $PORT --api-key \$KEY &"
KEY="sk-demo-$$"
"$SLMFORGE" --log-format plain serve "$OUT/onnx-int4" --port "$PORT" --api-key "$KEY" &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  sleep 0.5
done
run curl -s "http://127.0.0.1:$PORT/v1/models" -H "Authorization: Bearer $KEY"
echo
echo "What should I pack for a trip to Lisbon?" | \
  OPENAI_API_KEY="$KEY" run "$SLMFORGE" chat "openai:travel@http://127.0.0.1:$PORT/v1" --max-tokens 48

step "7. Evaluate: base vs fine-tuned (PyTorch) vs the served int4 ONNX + adapter, side by side"
OPENAI_API_KEY="$KEY" run "$SLMFORGE" eval --data "$OUT/data/split/test.jsonl" \
  --target base="$OUT/base" --target tuned="$OUT/merged" \
  --target served="openai:travel@http://127.0.0.1:$PORT/v1" \
  --limit 12 --max-tokens 48 --out "$OUT/eval" --force
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; trap - EXIT

step "Done. Artifacts (each with a slmforge.json manifest):"
for path in base data/split adapter merged onnx-int4 eval; do printf '  %s/%s\n' "$OUT" "$path"; done
printf '  loss plot: %s/adapter/loss.png\n' "$OUT"
printf '  eval report: %s/eval/report.html\n' "$OUT"
