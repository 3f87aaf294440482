#!/usr/bin/env bash
# The per-layer results: `vericonv bench` (the client of one private layer against the plaintext
# convolutions a Rust user would pick, on the same CPU) on the layer suite at batches 1 and 16,
# one thread and every core; the privacy modes side by side on ResNet-18's layers; and
# `vericonv bench --backend gpu` (every GPU kernel checked, then timed) on the adapter wgpu finds.
# Writes docs/benchmarks/layers.md (machine, date, commands, the tables as printed) and
# docs/benchmarks/speedup-<threads>t.svg.
#
#   scripts/bench-layers.sh            # about 20 minutes on 2 cores
#
# SUITE (default full), BATCHES (default 1,16) and THREADS (default 1,0: one and every core)
# override the defaults; FROM_REPORTS=1 rewrites the document from the last run's outputs in
# reports/bench-layers without measuring again.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
suite="${SUITE:-full}" batches="${BATCHES:-1,16}" threads="${THREADS:-1,0}"
bin=./target/release/vericonv
out="reports/bench-layers"
mkdir -p "$out" docs/benchmarks
if [ "${FROM_REPORTS:-0}" != 1 ]; then
  cargo build --release --quiet
  rm -f "$out"/speedup-*.svg
fi

layers_cmd="vericonv bench --suite $suite --batches $batches --threads $threads"
modes_cmd="vericonv bench --privacy lowrank,two-server,pad --threads 1 --batches 16 --only ResNet-18"
gpu_cmd="vericonv bench --backend gpu"
if [ "${FROM_REPORTS:-0}" != 1 ]; then
  # Mesa's window-system probe complains without a runtime dir.
  export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
  echo "== $layers_cmd" >&2
  "$bin" bench --suite "$suite" --batches "$batches" --threads "$threads" --out "$out" > "$out/layers.txt"
  echo "== $modes_cmd" >&2
  "$bin" bench --privacy lowrank,two-server,pad --threads 1 --batches 16 --only ResNet-18 --out "$out/modes" \
    > "$out/modes.txt"
  echo "== $gpu_cmd" >&2
  if ! "$bin" bench --backend gpu --out "$out/gpu" > "$out/gpu.txt" 2>&1; then
    echo "(no GPU adapter: $(tail -n 1 "$out/gpu.txt"))" > "$out/gpu.txt"
  fi
fi
# A table as printed, without the lines that name this run's output files.
table() { grep -v -e '^wrote ' -e 'XDG_RUNTIME_DIR' "$1"; }

for svg in "$out"/speedup-*.svg; do
  cp "$svg" "docs/benchmarks/$(basename "$svg")"
done

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
flags="$(grep -m1 '^flags' /proc/cpuinfo)"
for f in avx512f avx512_vnni amx_int8; do
  case " $flags " in *" $f "*) cpu="$cpu, $f" ;; esac
done
cores="$(nproc)"
{
  echo "# One private layer against the plaintext convolution"
  echo
  echo "Written by \`scripts/bench-layers.sh\` on $(date -u -r "$out/layers.txt" +%Y-%m-%d): $cpu, $cores core(s)."
  echo "Every configuration first checks itself (the decrypted result equals the exact integer"
  echo "convolution; the baselines agree), then times the median of its runs. How to read the"
  echo "columns: [the benchmarks' guide](README.md#vericonv-bench-one-private-layer)."
  echo
  echo "## The layer suite"
  echo
  echo "\`$layers_cmd\`:"
  echo
  echo '```text'
  table "$out/layers.txt"
  echo '```'
  echo
  for svg in "$out"/speedup-*.svg; do
    name="$(basename "$svg")"
    echo "![client speed-up per layer, ${name#speedup-}]($name)"
    echo
  done
  echo "## The privacy modes side by side"
  echo
  echo "\`$modes_cmd\`:"
  echo
  echo '```text'
  table "$out/modes.txt"
  echo '```'
  echo
  echo "## The GPU kernels"
  echo
  echo "\`$gpu_cmd\` (on a CPU rasteriser such as Mesa's llvmpipe these figures prove the kernels"
  echo "and the harness, not GPU speed):"
  echo
  echo '```text'
  table "$out/gpu.txt"
  echo '```'
} > docs/benchmarks/layers.md
echo "wrote docs/benchmarks/layers.md" >&2
