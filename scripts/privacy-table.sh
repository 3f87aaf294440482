#!/usr/bin/env bash
# Regenerates the "Privacy, measured" tables of docs/privacy.md: runs `vericonv attack` on the
# input of every convolution of every committed model, on the test split of the model's data
# set, in mode lowrank at ranks 1, 2, 4 and 8 and in modes two-server, pad and split-model, then
# prints Markdown tables from the JSON reports. Run scripts/fetch-data.sh first.
#
# IMAGES (default 100) images per model; the 32- and 64-channel models (vgg-*, resnet-*) use
# IMAGES_LARGE (default 50), since the attack at rank 8 takes seconds per image there. MODES
# (a `;`-separated list, default all) runs only some columns; the others print as `-`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
images="${IMAGES:-100}"
images_large="${IMAGES_LARGE:-50}"
out="${OUT:-reports/attack}"
cargo build --release --quiet
reports=()
for json in models/*.json; do
  name="$(basename "$json" .json)"
  dataset="${name#*-}"
  limit="$images"
  case "$name" in vgg-* | resnet-*) limit="$images_large" ;; esac
  IFS=';' read -r -a modes <<<"${MODES:-lowrank --rank 1;lowrank --rank 2;lowrank --rank 4;lowrank --rank 8;two-server;pad;split-model}"
  for mode in "${modes[@]}"; do
    tag="$(echo "$mode" | tr -d ' -')"
    report="$out/table/$name-$tag.json"
    # A report newer than its model is reused (delete the folder to start over).
    if [ ! "$report" -nt "$json" ]; then
      # shellcheck disable=SC2086
      ./target/release/vericonv attack --model "$json" --dataset "$dataset" --privacy $mode \
        --limit "$limit" --out "$out/table/$name-$tag" >&2
      cp "$(ls -t "$out/table/$name-$tag"/*.json | head -1)" "$report"
    fi
    reports+=("$report")
  done
done
python3 - "${reports[@]}" <<'PY'
import json, sys
from collections import OrderedDict

rows = OrderedDict()   # (model, dataset, layer) -> {mode: layer report}
for path in sys.argv[1:]:
    for r in json.load(open(path)):
        rows.setdefault((r["model"], r["dataset"], r["layer"], r["input_shape"], r["images"]), {})[r["privacy"]] = r

def best(r):
    return max(r["views"], key=lambda v: (v["exact_images"], v["exact_pixels"]))

def cell(r):
    v = best(r)
    img = 100 * v["exact_images"] / r["images"]
    px = 100 * v["exact_pixels"] / (r["images"] * r["pixels_per_image"])
    return f"{img:.0f}% / {px:.1f}%"

modes = ["lowrank (rank 1)", "lowrank (rank 2)", "lowrank (rank 4)", "lowrank (rank 8)", "two-server", "pad", "split-model"]
print("| model | data set | layer | input | images | " + " | ".join(modes) + " | kernel slices from K' (certain) | kernel slices, split-model | s/image at ρ = 2 |")
print("|---|---|---|---|---|" + "---|" * len(modes) + "---|---|---|")
def kernel(k):
    return f'{100 * k["kernel_exact"] / k["kernel_slices"]:.1f}% ({100 * k["kernel_unique"] / k["kernel_slices"]:.0f}%)'
for (model, dataset, layer, shape, n), by_mode in rows.items():
    cells = [cell(by_mode[m]) if m in by_mode else "-" for m in modes]
    k = next((by_mode[m] for m in modes if m in by_mode and m != "split-model"), None)
    split = by_mode.get("split-model")
    secs = f'{best(by_mode["lowrank (rank 2)"])["seconds_per_image"]:.3f}' if "lowrank (rank 2)" in by_mode else "-"
    print(f"| {model} | {dataset} | {layer} | {shape} | {n} | " + " | ".join(cells)
          + f" | {kernel(k) if k else '-'} | {kernel(split) if split else '-'} | {secs} |")

print()
print("| mode | views tested | elements | worst χ² p (high bits) | worst χ² p (per position) | planes of full rank | largest \\|correlation\\| (4σ bound) | images or pixels recovered | kernel received: worst χ² p (high bits), largest \\|correlation\\| |")
print("|---|---|---|---|---|---|---|---|---|")
for mode in ["lowrank (rank 2)", "two-server", "pad", "split-model"]:
    views = [(r, v) for by_mode in rows.values() if mode in by_mode for r in [by_mode[mode]] for v in r["views"]]
    if not views:
        continue
    elements = sum(v["stats"]["elements"] for _, v in views)
    p_high = min(v["stats"]["chi2_high_bits_p"] for _, v in views)
    p_pos = min(v["stats"]["chi2_positions_p"] for _, v in views)
    full = sum(v["stats"]["full_rank_planes"] for _, v in views)
    planes = sum(v["stats"]["planes"] for _, v in views)
    corr = max(abs(v["stats"]["correlation"]) for _, v in views)
    bound = max(v["stats"]["correlation_4_sigma"] for _, v in views)
    pixels = sum(v["exact_pixels"] for _, v in views)
    imgs = sum(v["exact_images"] for _, v in views)
    k_p = min(v["kernel_stats"]["chi2_high_bits_p"] for _, v in views)
    k_corr = max(abs(v["kernel_stats"]["correlation"]) for _, v in views)
    print(f"| {mode} | {len(views)} | {elements:,} | {p_high:.3f} | {p_pos:.3f} | {full:,} of {planes:,} | {corr:.4f} ({bound:.4f}) | {imgs} images, {pixels:,} pixels | {k_p:.3g}, {k_corr:.3f} |")
PY
