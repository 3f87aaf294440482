#!/usr/bin/env bash
# Real-GPU figures, for a machine with an NVIDIA (or any Vulkan) GPU and perhaps no Rust
# toolchain: the layer suite on the GPU kernels (`bench --backend gpu --suite full`) and the
# whole-model bench with the cloud on the GPU (`bench --model M --backend gpu`). All JSON goes
# to one folder.
#
#   scripts/gpu-bench.sh prepare DIR     on a build machine: copies target/release/vericonv
#                                        (stripped and gzipped: about 16 MB), the committed models,
#                                        this script, ort-baseline.py, export-torchvision.py (with
#                                        torch_export.py) and a
#                                        Vulkan loader (Debian's libvulkan1) into DIR, about 20 MB
#                                        in all (a lent machine takes 64 MiB with the repository)
#   DIR/gpu-bench.sh run [OUT]           on the GPU machine, inside DIR: runs everything, writes OUT
#                                        (default: gpu-bench-out). ResNet-18 and MobileNetV2 (45 and
#                                        14 MB of random weights, which do not compress) are exported
#                                        there when its python3 has torch and torchvision, else
#                                        skipped; exports found in DIR/models are used as they are.
#
# QUICK=1 limits the run to batch 1 and the quick layer suite (lavapipe, smoke tests).
set -euo pipefail

prepare() {
  local dir=$1 root
  root=$(cd "$(dirname "$0")/.." && pwd)
  mkdir -p "$dir/lib" "$dir/models" "$dir/scripts"
  # The binary without its debug information and symbols (320 MB with them), compressed.
  cp "$root/target/release/vericonv" "$dir/vericonv"
  strip -s "$dir/vericonv" 2>/dev/null || echo "strip not found: the binary keeps its debug information" >&2
  gzip -f -6 "$dir/vericonv"
  cp "$root/scripts/gpu-bench.sh" "$dir/gpu-bench.sh"
  cp "$root/scripts/ort-baseline.py" "$root/scripts/export-torchvision.py" "$root/scripts/torch_export.py" "$dir/scripts/"
  cp "$root"/models/*.json "$root"/models/*.safetensors "$dir/models/"
  # The Vulkan loader, in case the GPU machine has the driver's ICD but no libvulkan.so.1.
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download libvulkan1 >/dev/null 2>&1 && dpkg -x libvulkan1_*.deb x) || true
  find "$tmp/x" -name 'libvulkan.so.1*' -exec cp -a {} "$dir/lib/" \; 2>/dev/null || true
  rm -rf "$tmp"
  echo "prepared $dir: $(du -sh "$dir" | cut -f1); run it there with ./gpu-bench.sh run"
}

run() {
  local out=${1:-gpu-bench-out} bin=./vericonv
  if [ ! -x "$bin" ] && [ -f vericonv.gz ]; then
    gzip -dc vericonv.gz >vericonv 2>/dev/null || python3 -c 'import gzip,shutil,sys; shutil.copyfileobj(gzip.open("vericonv.gz"), sys.stdout.buffer)' >vericonv
    chmod +x vericonv
  fi
  [ -x "$bin" ] || bin=target/release/vericonv
  mkdir -p "$out"
  # The torchvision models, exported here when they were not carried (they exceed what travels).
  if [ "${QUICK:-0}" != 1 ] && [ ! -f models/resnet18.onnx ] && [ -f scripts/export-torchvision.py ] \
    && python3 -c 'import torch, torchvision' 2>/dev/null; then
    python3 scripts/export-torchvision.py models resnet18 mobilenet_v2 | tee "$out/export.txt" || true
  fi
  if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1'; then
    export LD_LIBRARY_PATH="$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  "$bin" adapters | tee "$out/adapters.txt"
  local batches=1,16 suite=full
  if [ "${QUICK:-0}" = 1 ]; then batches=1; suite=quick; fi
  "$bin" bench --backend gpu --suite "$suite" --batches "$batches" --reps 5 --out "$out/layers" | tee "$out/layers.txt"
  local models=(models/lenet5-mnist.json models/resnet-mnist.json)
  for m in models/resnet18.onnx models/mobilenet_v2.onnx data/torchvision/resnet18.onnx data/torchvision/mobilenet_v2.onnx; do
    [ -f "$m" ] && models+=("$m")
  done
  [ "${QUICK:-0}" = 1 ] && models=(models/lenet5-mnist.json)
  for m in "${models[@]}"; do
    local name
    name=$(basename "$m"); name=${name%.*}
    "$bin" bench --model "$m" --backend gpu --batches "$batches" --threads 0 --privacy lowrank,two-server --reps 3 \
      --out "$out/model-$name" | tee "$out/model-$name.txt"
  done
  echo "wrote $out"
}

case "${1:-}" in
  prepare) prepare "${2:?usage: gpu-bench.sh prepare DIR}" ;;
  run) run "${2:-}" ;;
  *) echo "usage: gpu-bench.sh prepare DIR | run [OUT]" >&2; exit 2 ;;
esac
