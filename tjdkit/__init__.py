"""tjdkit: tensor methods that make language models faster and better."""

__version__ = "0.1.0"
