#!/usr/bin/env bash
# Grow the general chat head on a GPU and measure it there: what benchmarks/README.md reports as
# "the head grown on a GPU". On 2 CPU cores its ~10k replies would take 8-10 hours to generate (extrapolated from
# the default head's 252); on one H200 the whole run takes 4.4 min.
#
#   bash benchmarks/grow_head_gpu.sh RUNS_DIR
#
# RUNS_DIR/r4: recipe sharegpt-cp-gpu (rank 4, like bench's own head), then benched on the GPU in
# float32 and bfloat16; RUNS_DIR/r8: the same data at rank 8. Each step goes on when the one before
# fails, so one broken step still leaves the others' results. Copy RUNS_DIR/r4 to a CPU machine and
# run `tjdkit bench --head-dir RUNS_DIR/r4` there: the same held-out prompts as bench's own head.
set -uo pipefail
runs=${1:?usage: grow_head_gpu.sh RUNS_DIR}
mkdir -p "$runs"
step() {  # name, command...: time each step into RUNS_DIR/steps.tsv
    local name=$1 started=$SECONDS
    shift
    "$@"
    printf '%s\t%s\t%s\n' "$name" "$?" "$((SECONDS - started))" >> "$runs/steps.tsv"
}
step train-r4 python3 -m tjdkit train sharegpt-cp-gpu --out "$runs/r4" --json "$runs/train-r4.json"
step bench-r4 python3 -m tjdkit bench --head-dir "$runs/r4" --dtype float32,bfloat16 --json "$runs/bench-r4.json"
step train-r8 python3 -m tjdkit train sharegpt-cp-gpu --rank 8 --out "$runs/r8" --json "$runs/train-r8.json"
step bench-r8 python3 -m tjdkit bench --head-dir "$runs/r8" --dtype float32 --json "$runs/bench-r8.json"
