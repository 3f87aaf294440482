#!/usr/bin/env bash
# The whole-model speed-ups of the coverage table (docs/models.md): `vericonv bench --model` on
# every export of scripts/export-zoo.py in data/zoo (batch 16, one thread, mode pad, CPU clouds
# in the same process), each model on the path `bench` picks (the native pipeline when its
# importer covers the graph, else tract's graph with the convolutions private), against the
# fastest plaintext engine (onnxruntime, tract). Writes docs/benchmarks/coverage.md with the
# machine and the date.
#
#   /usr/bin/python3 scripts/export-zoo.py --large && scripts/coverage-bench.sh
#
# BATCH, THREADS, PRIVACY and REPS override the defaults (16, 1, pad, 1); MODELS restricts the
# run to some exports (space-separated names).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
batch="${BATCH:-16}" threads="${THREADS:-1}" privacy="${PRIVACY:-pad}" reps="${REPS:-1}"
cargo build --release --quiet
if [ -n "${MODELS:-}" ]; then
  names=($MODELS)
else
  names=()
  for onnx in data/zoo/*.onnx; do names+=("$(basename "$onnx" .onnx)"); done
fi
[ "${#names[@]}" -gt 0 ] || { echo "no exports in data/zoo: run /usr/bin/python3 scripts/export-zoo.py --large" >&2; exit 1; }
reports=()
for name in "${names[@]}"; do
  out="reports/coverage/$name"
  shape="$(python3 -c 'import json,sys; print(",".join(map(str, json.load(open(sys.argv[1]))["input"])))' "data/zoo/$name.json")"
  echo "== $name ($shape)" >&2
  ./target/release/vericonv bench --model "data/zoo/$name.onnx" --input-shape "$shape" --batches "$batch" \
    --threads "$threads" --privacy "$privacy" --reps "$reps" --out "$out" >&2
  reports+=("$out/bench-model.json")
done
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
python3 - "$cpu" "$(date -u +%Y-%m-%d)" "$batch" "$threads" "$privacy" "${reports[@]}" > docs/benchmarks/coverage.md <<'PY'
import json, sys
cpu, date, batch, threads, privacy = sys.argv[1:6]
def t(s):
    return "-" if s is None else (f"{s:.3f} s" if s >= 1 else f"{s * 1e3:.1f} ms")
print("# Whole-model speed-ups of the coverage table\n")
print(f"Written by `scripts/coverage-bench.sh` on {date}: {cpu}, batch {batch}, {threads} thread(s), mode {privacy}, "
      "CPU clouds in the same process. *client* is the client's online work per batch (the private pass minus "
      "the clouds' time; the pads are drawn offline before each pass); the speed-up is the fastest plaintext "
      "engine's time over it. Private logits were checked bit-identical to the quantized model's in every row.\n")
print("| model | client path | client | tract | onnxruntime | speed-up | clouds | pads (offline) |")
print("|---|---|---|---|---|---|---|---|")
for path in sys.argv[6:]:
    for r in json.load(open(path)):
        print(f'| {r["model"]} | {r["path"]} | {t(r["client_s"])} | {t(r["tract_s"])} | {t(r["onnxruntime_s"])} | '
              f'{r["speedup"]:.2f}× ({r["best_plaintext"]}) | {t(r["cloud_s"])} | {t(r["pad_offline_s"])} |')
PY
cat docs/benchmarks/coverage.md
