#!/usr/bin/env bash
# Re-creates every trained model under models/ (about 80 min on 2 CPU cores). Installs the
# pinned training stack into .venv-train first, and fetches the data if needed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/fetch-data.sh >/dev/null
if [ ! -x .venv-train/bin/python ]; then
  python3 -m venv .venv-train
  .venv-train/bin/pip install --quiet -r scripts/requirements-train.txt
fi
py=.venv-train/bin/python
$py scripts/train.py --arch lenet5 --dataset mnist --epochs 4 --seed 0
$py scripts/train.py --arch lenet5 --dataset fashion-mnist --epochs 6 --seed 0
$py scripts/train.py --arch lenet5 --dataset digits --epochs 60 --batch 64 --seed 0
$py scripts/train.py --arch vgg --dataset mnist --epochs 2 --seed 0
$py scripts/train.py --arch vgg --dataset fashion-mnist --epochs 3 --seed 0
$py scripts/train.py --arch resnet --dataset mnist --epochs 2 --seed 0
$py scripts/train.py --arch resnet --dataset fashion-mnist --epochs 1 --seed 0
