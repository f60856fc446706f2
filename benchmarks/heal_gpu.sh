#!/usr/bin/env bash
# Heal factorised Gemma 3 270M at GPU scale: what benchmarks/README.md reports as "healing on a GPU".
# On 2 CPU cores healing runs at ~39 tokens/s, so the 15-minute budget buys ~35k tokens;
# this runs recipe gemma3-heal-gpu (2M tokens by default) for both conversions at once on one GPU:
#
#   bash benchmarks/heal_gpu.sh RUNS_DIR [HEAL_TOKENS]
#
# RUNS_DIR/latent: the KV cache halved (latent 128,128); RUNS_DIR/tucker: attention weights 2x
# smaller (Tucker 2x). Each writes its report (perplexity dense -> factorised -> healed on the
# held-out ShareGPT test tokens) to RUNS_DIR/NAME.json and its healing curve to NAME/metrics.jsonl.
set -uo pipefail
runs=${1:?usage: heal_gpu.sh RUNS_DIR [HEAL_TOKENS]}
tokens=${2:-2000000}
mkdir -p "$runs"
# Convert the GGUF once, before two processes would race to cache the same conversion.
python3 -c "from tjdkit.models.loading import load_model; load_model('gemma3', 'float32', 'cpu')" || exit 1
heal() {  # name, extra flags...
    local name=$1 started=$SECONDS
    shift
    python3 -m tjdkit factorize gemma3 --recipe recipes/gemma3-heal-gpu.yaml --heal "$tokens" \
        --heal-dir "$runs/$name" --json "$runs/$name.json" "$@" > "$runs/$name.log" 2>&1
    printf '%s\t%s\t%s\n' "$name" "$?" "$((SECONDS - started))" >> "$runs/steps.tsv"
}
heal latent &
heal tucker --method tucker --rank 2x &
wait
cat "$runs/steps.tsv"
