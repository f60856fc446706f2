"""The modes bench times, torch-free so the CLI's --help can name them."""

BENCH_MODES = ("ar", "hf", "draft", "verify", "lookup")
DEFAULT_MODES = BENCH_MODES
LOSSLESS = ("hf", "verify", "lookup")  # greedy output must equal `ar`'s
PLAIN = ("ar", "hf")  # one token per forward: the baseline a speed-up is measured against
NEEDS_HEAD = ("draft", "verify")
