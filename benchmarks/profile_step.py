"""Where does a decoding step's time go? One ar step vs one verify step, part by part.

    python benchmarks/profile_step.py --head-dir ~/.cache/tjdkit/heads/gemma3-cp-r4-h4-stemp

Times (median of --repeats, after warm-up, at a context of --context tokens):
  body(n)     the transformer body on n new tokens with a KV cache (no lm_head)
  lm_head(n)  the full-vocabulary output layer on n hidden states, as tjdkit computes it
              (nn.Linear(n): the same layer called as a module, for comparison)
  draft       head.draft conditioned on the known next token (H-1 drafts)
  crop        rolling the KV cache back by H-1 tokens
An ar step is body(1) + lm_head(1); a verify step is body(H) + lm_head(H) + draft + crop.
The ratio tells how many tokens a verify step must yield (tau) to break even and to reach 2x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    from tjdkit.decoding import new_cache, output_logits
    from tjdkit.training.runs import load_run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head-dir", required=True)
    parser.add_argument("--context", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()

    run = load_run(args.head_dir)
    model, head = run.model, run.head
    H = head.horizon
    vocab = model.config.get_text_config().vocab_size
    context = torch.randint(0, vocab, (1, args.context))
    lm_head = model.get_output_embeddings()
    results = {}

    with torch.inference_mode():
        for n in (1, H):
            def body(n=n):
                cache = new_cache(model)
                model.base_model(input_ids=context, cache=cache, use_cache=True)
                cache.activate_past_recording()
                start = time.perf_counter()
                model.base_model(input_ids=torch.randint(0, vocab, (1, n)), cache=cache, use_cache=True)
                return time.perf_counter() - start

            body()  # warm-up
            results[f"body({n})"] = statistics.median(body() for _ in range(args.repeats))
            hidden = torch.randn(n, model.config.get_text_config().hidden_size)
            results[f"lm_head({n})"] = median_seconds(lambda hidden=hidden: output_logits(model, hidden), args.repeats)
            results[f"nn.Linear({n})"] = median_seconds(lambda hidden=hidden: lm_head(hidden), args.repeats)

        state = torch.randn(1, model.config.get_text_config().hidden_size)
        first = head.vocab_ids[:1] if head.vocab_ids is not None else torch.tensor([0])
        results["draft"] = median_seconds(lambda: head.draft(state, greedy=True, first=first), args.repeats)

        def crop():
            cache = new_cache(model)
            model.base_model(input_ids=context, cache=cache, use_cache=True)
            cache.activate_past_recording()
            model.base_model(input_ids=torch.randint(0, vocab, (1, H)), cache=cache, use_cache=True)
            start = time.perf_counter()
            cache.crop(-(H - 1))
            return time.perf_counter() - start

        results["crop"] = statistics.median(crop() for _ in range(args.repeats))

    ar = results["body(1)"] + results["lm_head(1)"]
    verify = results[f"body({H})"] + results[f"lm_head({H})"] + results["draft"] + results["crop"]
    summary = {
        "parts_ms": {key: 1000 * value for key, value in results.items()},
        "ar_step_ms": 1000 * ar,
        "verify_step_ms": 1000 * verify,
        "verify_over_ar": verify / ar,
        "tau_for_1x": verify / ar,
        "tau_for_2x": 2 * verify / ar,
        "max_tau": H,
        "threads": torch.get_num_threads(),
        "dtype": str(next(model.parameters()).dtype),
    }
    for key, value in summary["parts_ms"].items():
        print(f"{key:>12}  {value:7.1f} ms")
    print(f"ar step {summary['ar_step_ms']:.1f} ms · verify step (H={H}) {summary['verify_step_ms']:.1f} ms "
          f"= {summary['verify_over_ar']:.2f} ar steps: tau must exceed {summary['tau_for_1x']:.2f} to win and reach "
          f"{summary['tau_for_2x']:.2f} for 2x (at most {H})")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
