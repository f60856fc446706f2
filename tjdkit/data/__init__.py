"""Datasets for training and evaluating heads, all available offline (gsm8k excepted)."""

from tjdkit.data.stemp import stemp_dataset, stemp_rows

__all__ = ["stemp_dataset", "stemp_rows"]
