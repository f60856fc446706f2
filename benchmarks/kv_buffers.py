"""tjdkit's in-place KV cache layers against transformers' DynamicCache: one-token steps at several contexts.

    python benchmarks/kv_buffers.py --formats float32,fp16-weights --contexts 300,1000,3000

For each context, both caches are prefilled with the same random tokens, then one-token steps run
interleaved (transformers', then tjdkit's) after a warm-up (`interleaved_ms`); the median of --steps is
reported with the ratio, and whether the two caches gave bit-identical hidden states.
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3")
    parser.add_argument("--formats", default="float32,fp16-weights")
    parser.add_argument("--contexts", default="300,1000,3000")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()

    from transformers import DynamicCache

    from tjdkit.decoding.forward import new_cache, next_hidden
    from tjdkit.kernels.linear import interleaved_ms
    from tjdkit.models import load_model
    from tjdkit.models.quantize import weights_copy

    base, _ = load_model(args.model, dtype="float32")
    for weights in args.formats.split(","):
        model = base if weights == "float32" else weights_copy(base, weights)
        for context in (int(c) for c in args.contexts.split(",")):
            prompt = torch.randint(0, 1000, (1, context), generator=torch.Generator().manual_seed(0))
            caches = {"transformers": DynamicCache(config=model.config), "tjdkit": new_cache(model)}
            hidden = {}

            def step(token, name):
                hidden[name] = model.base_model(input_ids=token, cache=caches[name], use_cache=True).last_hidden_state

            with torch.inference_mode():
                for cache in caches.values():
                    next_hidden(model, prompt, cache)
                paths = {name: (lambda token, name=name: step(token, name)) for name in caches}
                ms = interleaved_ms(paths, [torch.tensor([[5]])], repeats=args.steps)
            print(f"{weights:>13} context {context:>5}: transformers {ms['transformers']:.2f} ms, "
                  f"tjdkit {ms['tjdkit']:.2f} ms, x{ms['transformers'] / ms['tjdkit']:.3f}, "
                  f"identical {torch.equal(hidden['transformers'], hidden['tjdkit'])}", flush=True)


if __name__ == "__main__":
    main()
