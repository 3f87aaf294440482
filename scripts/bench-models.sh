#!/usr/bin/env bash
# The whole-network results of the README: `vericonv bench --model` on torchvision's ResNet-18,
# VGG-16 and MobileNetV2 (exported by scripts/export-torchvision.py) in every privacy mode,
# batch 16, one thread, CPU clouds in the same process, against the fastest plaintext engine.
# Writes docs/benchmarks/whole-models.md with the machine and the date.
#
#   /usr/bin/python3 scripts/export-torchvision.py && scripts/bench-models.sh
#
# BATCH, THREADS, REPS (default 16, 1, 2) and MODELS (default "resnet18 vgg16 mobilenet_v2")
# override the defaults.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
batch="${BATCH:-16}" threads="${THREADS:-1}" reps="${REPS:-2}"
models=(${MODELS:-resnet18 vgg16 mobilenet_v2})
cargo build --release --quiet
reports=()
for name in "${models[@]}"; do
  model="data/torchvision/$name.onnx"
  [ -f "$model" ] || { echo "$model is missing: run /usr/bin/python3 scripts/export-torchvision.py" >&2; exit 1; }
  out="reports/whole-models/$name"
  echo "== $name" >&2
  ./target/release/vericonv bench --model "$model" --batches "$batch" --threads "$threads" \
    --privacy lowrank,two-server,pad,split-model --reps "$reps" --out "$out" >&2
  reports+=("$out/bench-model.json")
done
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
python3 - "$cpu" "$(date -u +%Y-%m-%d)" "$batch" "$threads" "$reps" "${reports[@]}" > docs/benchmarks/whole-models.md <<'PY'
import json, sys
cpu, date, batch, threads, reps = sys.argv[1:6]
def t(s):
    return "-" if s is None else (f"{s:.3f} s" if s >= 1 else f"{s * 1e3:.1f} ms")
print("# Whole networks in every privacy mode\n")
print(f"Written by `scripts/bench-models.sh` on {date}: {cpu}, batch {batch}, {threads} thread(s), "
      f"the median of {reps} passes after a warm-up, CPU clouds in the same process. *client* is the client's "
      "online work per batch (the private pass minus the clouds' time); the speed-up is the fastest plaintext "
      "engine's time over it; *pads* is the offline work of modes pad and split-model (drawn before each pass). "
      "Private logits were checked bit-identical to the quantized model's in every row.\n")
print("| model | mode | client | speed-up | pads (offline) | clouds | onnxruntime | tract | session setup |")
print("|---|---|---|---|---|---|---|---|---|")
for path in sys.argv[6:]:
    for r in json.load(open(path)):
        print(f'| {r["model"]} | {r["privacy"]} | {t(r["client_s"])} | {r["speedup"]:.2f}× ({r["best_plaintext"]}) | '
              f'{t(r["pad_offline_s"])} | {t(r["cloud_s"])} | {t(r["onnxruntime_s"])} | {t(r["tract_s"])} | {t(r["session_s"])} |')
PY
cat docs/benchmarks/whole-models.md
