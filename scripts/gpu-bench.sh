#!/usr/bin/env bash
# Real-GPU figures, for a machine with an NVIDIA (or any Vulkan) GPU and perhaps no Rust
# toolchain: the layer suite on the GPU kernels (`bench --backend gpu --suite full`) and the
# whole-model bench with the cloud on the GPU (`bench --model M --backend gpu`). All JSON goes
# to one folder.
#
#   scripts/gpu-bench.sh prepare DIR     on a build machine: copies target/release/vericonv, the
#                                        committed and exported models, this script, ort-baseline.py
#                                        and a Vulkan loader (Debian's libvulkan1) into DIR
#   DIR/gpu-bench.sh run [OUT]           on the GPU machine, inside DIR: runs everything, writes OUT
#                                        (default: gpu-bench-out)
#
# QUICK=1 limits the run to batch 1 and the quick layer suite (lavapipe, smoke tests).
set -euo pipefail

prepare() {
  local dir=$1 root
  root=$(cd "$(dirname "$0")/.." && pwd)
  mkdir -p "$dir/lib" "$dir/models" "$dir/scripts"
  cp "$root/target/release/vericonv" "$dir/"
  cp "$root/scripts/gpu-bench.sh" "$dir/gpu-bench.sh"
  cp "$root/scripts/ort-baseline.py" "$dir/scripts/"
  cp "$root"/models/*.json "$root"/models/*.safetensors "$dir/models/"
  if [ -d "$root/data/torchvision" ]; then
    cp "$root"/data/torchvision/resnet18.onnx "$root"/data/torchvision/mobilenet_v2.onnx "$dir/models/" 2>/dev/null || true
  fi
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
  [ -x "$bin" ] || bin=target/release/vericonv
  mkdir -p "$out"
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
