"""Evaluation: answers scored after `####`, NLL of a head against its model, verify acceptance
along the model's own output, and molecules (validity, uniqueness, novelty, TPSA).

    result = evaluate(model, tokenizer, head, dataset="stemp", modes=("ar", "verify"))
"""

from tjdkit.evaluation.answers import extract_answer, is_correct
from tjdkit.evaluation.heads import evaluate, evaluate_nll

__all__ = ["evaluate", "evaluate_nll", "extract_answer", "is_correct"]
