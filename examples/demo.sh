#!/usr/bin/env bash
# The slmforge journey on a tiny model built here and slmforge's own sample data, from one
# workflow file (examples/workflow.yaml): tiny model -> data -> LoRA -> merge -> int4 ONNX with
# a switchable adapter -> a running deployment -> eval of base, tuned, int4 and the endpoint ->
# the on-device model and the endpoint compared side by side (slmforge app compare) ->
# DPO on preference pairs over the fine-tuned model.
# Every line is a command a user would type; artifacts land in demo-out/workflow/. Running it
# again skips every cached stage.
set -euo pipefail
cd "$(dirname "$0")/.."
SLMFORGE="${SLMFORGE:-.venv/bin/slmforge}"
OUT=demo-out/workflow
RUNS="$OUT/runs"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "1. The whole journey from one file (each stage writes an artifact with a slmforge.json)"
run "$SLMFORGE" run examples/workflow.yaml --dry-run
run "$SLMFORGE" run examples/workflow.yaml

step "2. Run it again: every stage is cached"
run "$SLMFORGE" run examples/workflow.yaml

step "3. Ask the fine-tuned model: PyTorch merged, ONNX int4 with its adapter, the deployment"
QUESTION="What should I pack for a trip to Lisbon?"
echo "$QUESTION" | run "$SLMFORGE" chat "$OUT/merged" --max-tokens 48
echo "$QUESTION" | run "$SLMFORGE" chat "$OUT/onnx-int4+travel" --max-tokens 48
run "$SLMFORGE" deploy list
echo "$QUESTION" | SLMFORGE_API_KEY="$(cat "$OUT/travel-demo.key")" \
  run "$SLMFORGE" chat deploy:travel-demo:travel --max-tokens 48

step "4. Side by side: int4 ONNX + adapter on-device vs the deployment standing in for the cloud"
SLMFORGE_API_KEY="$(cat "$OUT/travel-demo.key")" run "$SLMFORGE" app compare \
  --data "$OUT/data/split/test.jsonl" --limit 5 --max-tokens 32 --similarity f1 \
  --local "$OUT/onnx-int4+travel" --cloud deploy:travel-demo:travel --out "$OUT/compare" --force

step "5. Preference tuning: DPO over the fine-tuned model, its own answers preferred"
run "$SLMFORGE" data sample --kind preference --out "$OUT/pairs/pairs.jsonl" --force
run "$SLMFORGE" data split "$OUT/pairs/pairs.jsonl" --out-dir "$OUT/pairs" --validation 0.1 --force
run "$SLMFORGE" finetune --model "$OUT/merged" --objective dpo --beta 0.1 \
  --data "$OUT/pairs/train.jsonl" --eval-data "$OUT/pairs/validation.jsonl" \
  --max-steps 20 --lr 3e-3 --target-modules all-linear --eval-every 10 --out "$OUT/dpo" --force

step "Done. Artifacts (each with a slmforge.json manifest):"
for path in base data/split adapter merged onnx-int4 eval compare dpo; do printf '  %s/%s\n' "$OUT" "$path"; done
printf '  loss plots: %s/adapter/loss.png, %s/dpo/loss.png (reward accuracy)\n  eval report: %s/eval/report.html\n' "$OUT" "$OUT" "$OUT"
printf '  side by side: %s/compare/compare.md\n' "$OUT"
printf '  deployment travel-demo keeps running (%s deploy list)\n' "$SLMFORGE"
printf '  remove everything the demo created, deployment included:\n'
printf '    %s clean --all --runs-dir %s --yes && rm -rf %s/{compare,pairs,dpo}\n' "$SLMFORGE" "$RUNS" "$OUT"
