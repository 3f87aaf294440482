#!/usr/bin/env bash
# Regenerates the accuracy table of docs/models.md: runs `vericonv eval` for every committed model on
# the full test split of its data set (private path on the CPU backend) and prints a Markdown
# table from the JSON reports. Run scripts/fetch-data.sh first.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --release --quiet
rows=()
for json in models/*.json; do
  name="$(basename "$json" .json)"
  dataset="${name#*-}"
  # A report newer than its model is reused (delete reports/ to start over).
  if [ ! "reports/$name.json" -nt "$json" ]; then
    ./target/release/vericonv eval --model "$json" --dataset "$dataset" --backend cpu \
      --report "reports/$name.json" >&2
  fi
  rows+=("reports/$name.json")
done
python3 - "${rows[@]}" <<'PY'
import json, sys
print("| model | data set | images | float | quantized | private | drop (quantized − float) | private = quantized | command |")
print("|---|---|---|---|---|---|---|---|---|")
for path in sys.argv[1:]:
    r = json.load(open(path))
    same = "yes, logits bit-identical" if r["logits_bit_identical"] == r["images"] else f'{r["logits_bit_identical"]}/{r["images"]}'
    model = path.split("/")[-1][:-5]
    print(f'| {model} | {r["dataset"]} | {r["images"]} | {100*r["float_accuracy"]:.2f}% | {100*r["quantized_accuracy"]:.2f}% | '
          f'{100*r["private_accuracy"]:.2f}% | {100*(r["quantized_accuracy"]-r["float_accuracy"]):+.2f} pp | {same} | '
          f'`vericonv eval --model models/{model}.json --dataset {r["dataset"]} --backend cpu` |')
PY
