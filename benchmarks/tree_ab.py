"""Do token trees pay on this machine? verify with one draft path a step against verify with trees,
on the same prompts, interleaved prompt by prompt after a warm-up, in each weight format.

    python benchmarks/tree_ab.py --head-dir ~/.cache/tjdkit/heads/gemma3-cp-r4-h4-sharegpt-* --prompts 3

"paths" sets verify's MAX_ALTERNATIVES to 0 (the copy and the head's greedy drafts, still combined
into a tree when the costs pay for it); "trees" leaves it at its default, so the head's next-best first
drafts may join as branches. Prints tok/s, tau and the share of tree steps per arm, and whether
both arms' text equals greedy decoding.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    from tjdkit.bench.run import bench_prompts
    from tjdkit.decoding import DecodeStats, generate
    from tjdkit.decoding import verify as verify_module
    from tjdkit.models.quantize import weights_copy
    from tjdkit.training.runs import load_run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head-dir", required=True)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="float32,fp16-weights")
    parser.add_argument("--json")
    args = parser.parse_args()

    run = load_run(args.head_dir)
    prompts = bench_prompts(run.tokenizer, "sharegpt", "test", args.prompts)
    eos = [run.tokenizer.eos_token_id]  # as bench decodes: the reply runs to max_new_tokens unless EOS
    default = verify_module.MAX_ALTERNATIVES
    arms = {"paths": 0, "trees": default}
    results = {}
    for dtype in args.dtype.split(","):
        model = run.model if dtype == "float32" else weights_copy(run.model, dtype)
        totals = {arm: DecodeStats("verify") for arm in arms}
        same = {arm: 0 for arm in arms}
        warm = torch.tensor([prompts[0]])
        for width in arms.values():  # warm-up, and the cost curves measured before any timing
            verify_module.MAX_ALTERNATIVES = width
            generate(model, warm, mode="verify", head=run.head, max_new_tokens=16)
        for index, prompt in enumerate(prompts):
            ids = torch.tensor([prompt])
            reference, _ = generate(model, ids, mode="ar", max_new_tokens=args.max_new_tokens, eos_token_ids=eos)
            order = list(arms) if index % 2 == 0 else list(reversed(arms))
            for arm in order:
                verify_module.MAX_ALTERNATIVES = arms[arm]
                start = time.perf_counter()
                tokens, stats = generate(model, ids, mode="verify", head=run.head, max_new_tokens=args.max_new_tokens,
                                         eos_token_ids=eos)
                stats.seconds = time.perf_counter() - start
                totals[arm].merge(stats)
                same[arm] += tokens == reference
        verify_module.MAX_ALTERNATIVES = default
        results[dtype] = {arm: {"tokens_per_second": s.tokens_per_second, "tau": s.tau,
                                "tree_share": s.tree_steps / s.steps if s.steps else 0.0,
                                "equal_to_greedy": f"{same[arm]}/{len(prompts)}"} for arm, s in totals.items()}
        paths, trees = (results[dtype][arm]["tokens_per_second"] for arm in ("paths", "trees"))
        results[dtype]["trees_over_paths"] = trees / paths if paths else 0.0
        print(dtype, json.dumps(results[dtype], indent=1))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)


if __name__ == "__main__":
    main()
