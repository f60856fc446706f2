"""A joint head on its model: accuracy per decoding mode, per-token NLL (head vs base), verify acceptance."""

from __future__ import annotations

from typing import Callable, Optional

from tjdkit.evaluation.answers import is_correct


def window_hidden(out, windows):
    """The final hidden state at each window's position [N, D], from a forward with output_hidden_states."""
    return out.hidden_states[-1][windows.batch, windows.position].float()


def evaluate_nll(model, head, examples, batch_size: int, pad_id: int) -> tuple[Optional[float], float]:
    """Per-token NLL on the answers' windows: the head's, and the base model's by the chain rule.

    Without a head (a plain model) only the base NLL is computed, over single tokens.
    """
    import math

    import torch

    from tjdkit.data.examples import collate
    from tjdkit.heads.windows import base_window_nll, make_windows

    horizon = head.horizon if head is not None else 1
    head_total, base_total, count = 0.0, 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            ids, mask, first = collate(examples[start : start + batch_size], pad_id)
            ids, mask, first = ids.to(model.device), mask.to(model.device), first.to(model.device)
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=head is not None)
            windows = make_windows(ids, mask, horizon, first)
            keep = head.in_vocab(windows.targets).all(dim=1) if head is not None else torch.ones_like(windows.batch, dtype=torch.bool)
            if head is not None and keep.any():  # the heads' reshapes need at least one window
                head_total += -head.log_prob(window_hidden(out, windows)[keep], windows.targets[keep]).sum().item()
            base_total += base_window_nll(out.logits, windows)[keep].sum().item()
            count += int(keep.sum()) * horizon
    if count == 0:  # no window whose targets are all in the head's draft vocabulary (tiny data): nothing scored
        return (math.inf if head is not None else None), math.inf
    head_nll = head_total / count if head is not None else None
    return head_nll, base_total / count


def evaluate(
    model,
    tokenizer,
    head=None,
    dataset: str = "stemp",
    limit: int = 100,
    modes: tuple[str, ...] = ("ar", "draft"),
    max_new_tokens: int = 128,
    split: str = "test",
    on_progress: Optional[Callable[[str, int, int], None]] = None,
) -> dict:
    """Accuracy per decoding mode, per-token NLL (head vs base) and verify acceptance, in one run.

    Acceptance is measured along the model's own greedy output (`tjdkit.decoding.acceptance`):
    exactly the steps greedy `verify` takes, so it tells what verified decoding gains even
    when `verify` is not among the modes.
    """
    import torch

    from tjdkit.config import DataSection
    from tjdkit.data.examples import load_examples
    from tjdkit.decoding import DecodeStats, acceptance, generate

    report = on_progress or (lambda _stage, _done, _total: None)
    examples = load_examples(DataSection(dataset=dataset, eval_size=limit, max_length=4096), tokenizer, split)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    head_nll, base_nll = evaluate_nll(model, head, examples, 8, pad)
    result: dict = {"dataset": dataset, "split": split, "examples": len(examples), "nll": {"base": base_nll}}
    if head is not None:
        result["nll"]["head"] = head_nll
        result["head"] = head.config()
    eos = [tokenizer.eos_token_id]
    greedy_outputs: list[list[int]] = []
    result["modes"] = {}
    for mode in modes:
        correct, totals = 0, DecodeStats(mode)
        for index, example in enumerate(examples):
            prompt = torch.tensor([example.input_ids[: example.prompt_length]], device=model.device)
            with torch.no_grad():
                new, stats = generate(model, prompt, mode=mode, head=head, max_new_tokens=max_new_tokens, eos_token_ids=eos,
                                      drafter="head")  # eval scores the head (bench measures the fastest drafter)
            if mode == "ar":
                greedy_outputs.append(new)
            text = tokenizer.decode(new, skip_special_tokens=True)
            correct += example.target is not None and is_correct(text, example.target)
            totals.merge(stats)
            report(mode, index + 1, len(examples))
        scored = any(example.target is not None for example in examples)
        result["modes"][mode] = {
            "accuracy": correct / len(examples) if scored and examples else None,
            "tokens_per_forward": totals.new_tokens / max(totals.forwards, 1),
            "tokens_per_second": totals.tokens_per_second,
            "new_tokens": totals.new_tokens,
        }
        if mode == "verify":
            result["modes"][mode]["tau"] = totals.tau
            result["modes"][mode]["acceptance_by_position"] = totals.acceptance_by_position()
    if head is not None and greedy_outputs:
        totals = DecodeStats("acceptance")
        for example, continuation in zip(examples, greedy_outputs):
            prompt = torch.tensor([example.input_ids[: example.prompt_length]], device=model.device)
            totals.merge(acceptance(model, head, prompt, continuation))
        result["acceptance"] = {
            "steps": totals.steps,
            "mean_accepted": totals.mean_accepted,
            "tau": totals.tau,
            # share of the drafts offered at position j = 1..H-1 that were accepted
            "by_position": totals.acceptance_by_position(),
        }
    return result
