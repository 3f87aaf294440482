#!/usr/bin/env bash
# A longer fuzzing campaign than `cargo test` runs: the same targets (tests/fuzz.rs: the ONNX
# importer, the native loader, the IDX, CIFAR and digits-CSV loaders), more cases, a fresh seed.
#
#   scripts/fuzz.sh [CASES [SEED]]     (default: 20000 cases per target, a random seed)
#
# It prints each target's case count and outcome tally; a panic fails it and prints the seed
# and the case that panicked (rerun with the same SEED to reproduce).
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-20000}
seed=${2:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}
echo "fuzzing with $cases cases per target, VERICONV_FUZZ_SEED=$seed"
VERICONV_FUZZ_CASES=$cases VERICONV_FUZZ_SEED=$seed \
  cargo test --release --locked -p vericonv-tests --test fuzz -- --nocapture --test-threads 1
