#!/usr/bin/env bash
# Packs what the lent GPU machine needs beyond MLX's CUDA wheel, after `bash ../shared/gpu/prepare.sh` filled .gpu1/
# and .gpu2/ (run from the checkout root, with .venv set up by scripts/setup.sh):
#   - the wheels mlxd imports that the machine lacks (grpcio health and reflection, gguf, llguidance) into .gpu2/,
#     and py-spy (gpu_steps.sh gil-waits and pyspy:SHAPE);
#   - SmolLM2's tokenizer into .gpu2/smollm2-tokenizer (gpu_steps.sh's constrained steps: the machine cannot fetch it);
#   - the part of MLX's CUDA backend in .gpu1/ cut to what one call carries beside the checkout (64 MiB in all;
#     the checkout's files were 23 MB in session 38), its tail moved to the front of .gpu2/'s part: two calls, not
#     three, to set the machine up (the more calls, the likelier the machine is taken back between them).
# Then two calls back to back (the machine goes back 30 s after a call):
#   run carry [".gpu1"]: mkdir -p /tmp/gpu && cp .gpu1/* /tmp/gpu/
#   run carry [".gpu2"]: bash .gpu2/setup.sh > $OUT/setup.log 2>&1; export PYTHONPATH=/tmp/site && bash bench/gpu_steps.sh ...
# A later call on the warm machine needs only the export (and .gpu2 carried again for the constrained steps).
# For gpu_steps.sh speculate-ngram (real SmolLM2 on the GPU), SmolLM2's GGUF (98 MB) in three pieces, a call each:
#   run carry [".gpu3"] (then ".gpu4", ".gpu5"): mkdir -p /tmp/gpu && cp .gpu3/* /tmp/gpu/
#   and in the step's call: cat /tmp/gpu/gguf.a? > /tmp/gpu/SmolLM2-135M-Instruct.Q4_1.gguf (gpu_steps.sh does it)
# MLX's compiled kernels from an earlier machine (gpu_steps.sh KEEP_KERNELS=1 brings back kernels.tgz, and the
# driver's driver-kernels.tgz where it fits): copy them into .gpu5/ (room for ~11 MB beside the GGUF's last piece
# and the checkout), and the steps start from them instead of compiling for minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ -f .gpu1/mlxcuda.part.aa ] || { echo "run bash ../shared/gpu/prepare.sh first" >&2; exit 1; }
for folder in .gpu3 .gpu4 .gpu5; do
  grep -qx "$folder/" .git/info/exclude 2>/dev/null || echo "$folder/" >> .git/info/exclude
done
# The machine's Python is 3.12 on x86-64 Linux; llguidance's newest wheels are tagged manylinux_2_31.
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_31_x86_64 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .gpu2 \
  "grpcio-health-checking>=1.85.1" "grpcio-reflection>=1.85.1" "gguf>=0.17" "llguidance>=1.9" "py-spy>=0.4"
if [ ! -f .gpu2/smollm2-tokenizer/tokenizer.json ]; then
  mkdir -p .gpu2/smollm2-tokenizer
  PYTHONPATH="$PWD:$PWD/daemon" "$py" -c '
import sys
from pathlib import Path
from bench.models.random_model import write_tokenizer
from mlxd.demo_models import fetch_model
print("SmolLM2 tokenizer:", write_tokenizer(Path(sys.argv[1]), fetch_model()), "tokens")' .gpu2/smollm2-tokenizer
fi
# What a call may carry beside the checkout's files (tracked and untracked but not ignored), less 1 MB for commits.
checkout=$(git ls-files -co --exclude-standard -z | xargs -0 stat -c %s | awk '{s += $1} END {print s}')
room=$((64 * 1048576 - checkout - 1000000))
first=.gpu1/mlxcuda.part.aa
second=$(ls .gpu2/mlxcuda.part.a? | head -1)
if [ "$(stat -c %s "$first")" -gt "$room" ]; then
  tail -c +$((room + 1)) "$first" | cat - "$second" > "$second.new" && mv "$second.new" "$second"
  truncate -s "$room" "$first"
fi
if [ ! -f .gpu5/gguf.ac ]; then
  gguf=$(PYTHONPATH="$PWD/daemon" "$py" -c 'from mlxd.demo_models import fetch_model; print(fetch_model())')
  mkdir -p .gpu3 .gpu4 .gpu5
  (cd .gpu3 && split -b 34000000 "$gguf" gguf. && mv gguf.ab ../.gpu4/ && mv gguf.ac ../.gpu5/)
fi
du -sh .gpu1 .gpu2 .gpu3 .gpu4 .gpu5
[ $(($(du -sb .gpu2 | cut -f1) + checkout)) -le $((64 * 1048576)) ] || echo "warning: .gpu2 and the checkout pass 64 MiB" >&2
