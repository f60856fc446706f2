"""The modes bench times, torch-free so the CLI's --help can name them."""

BENCH_MODES = ("ar", "hf", "draft", "verify", "lookup")
DEFAULT_MODES = BENCH_MODES
LOSSLESS = ("hf", "verify", "lookup")  # greedy output must equal `ar`'s
NEEDS_HEAD = ("draft", "verify")
