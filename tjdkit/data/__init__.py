"""Datasets for training and evaluating heads, all offline but gsm8k: stemp, sharegpt, smiles,
gsm8k rows and splits (`data.sources`), tokenised examples (`data.examples`)."""

from tjdkit.data.stemp import stemp_dataset, stemp_rows

__all__ = ["stemp_dataset", "stemp_rows"]
