"""The modes bench times, torch-free so the CLI's --help can name them."""

BENCH_MODES = ("ar", "hf", "draft", "verify", "lookup", "assisted")
# `assisted` (transformers' generate drafting with the attached head) is asked for by name: it verifies
# the same head drafts as `verify` with drafter=head, so by default it would add a run without news
DEFAULT_MODES = ("ar", "hf", "draft", "verify", "lookup")
LOSSLESS = ("hf", "verify", "lookup", "assisted")  # greedy output must equal `ar`'s
PLAIN = ("ar", "hf")  # one token per forward: the baseline a speed-up is measured against
NEEDS_HEAD = ("draft", "verify", "assisted")
VERIFYING = ("verify", "assisted")  # tau and acceptance by draft position come from the loop's counts
