"""Training windows against a plain loop over positions."""

import torch

from tjdkit.models import load_model
from tjdkit.heads.windows import base_window_nll, last_hidden, make_windows


def brute_force(ids, mask, horizon, first=None, every=1, offset=0):
    out = []
    for b in range(ids.shape[0]):
        length = int(mask[b].sum())
        for t in range(ids.shape[1]):
            if t + horizon < length and (first is None or t >= first[b]) and t % every == offset % every:
                out.append((b, t, ids[b, t + 1 : t + 1 + horizon].tolist()))
    return out


def as_list(w):
    return [(int(b), int(t), row.tolist()) for b, t, row in zip(w.batch, w.position, w.targets)]


def test_windows_match_a_plain_loop():
    ids = torch.arange(24).view(2, 12)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    first = torch.tensor([3, 0])
    for horizon in (1, 2, 4):
        assert as_list(make_windows(ids, mask, horizon)) == brute_force(ids, mask, horizon)
        assert as_list(make_windows(ids, mask, horizon, first)) == brute_force(ids, mask, horizon, first)
        got = make_windows(ids, mask, horizon, every=horizon, offset=1)
        assert as_list(got) == brute_force(ids, mask, horizon, every=horizon, offset=1)


def test_hidden_states_are_what_lm_head_sees_and_base_nll_is_the_chain_rule():
    model, tokenizer = load_model("tiny-gemma3")
    enc = tokenizer(["What is 20°C in Fahrenheit?", "hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = last_hidden(model, enc.input_ids, enc.attention_mask)
        logits = model(**enc).logits
        assert torch.allclose(model.lm_head(hidden), logits, atol=1e-5)
        windows = make_windows(enc.input_ids, enc.attention_mask, 3)
        nll = base_window_nll(logits, windows)
    b, t = int(windows.batch[0]), int(windows.position[0])
    expected = -sum(torch.log_softmax(logits[b, t + k], -1)[enc.input_ids[b, t + k + 1]] for k in range(3))
    assert torch.allclose(nll[0], expected, atol=1e-5)


def test_windows_past_the_end_are_filled_with_the_end_token():
    ids = torch.tensor([[10, 11, 12, 13, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    windows = make_windows(ids, mask, 3, end_id=99)
    assert windows.position.tolist() == [0, 1, 2]  # every position with at least one real target
    assert windows.targets.tolist() == [[11, 12, 13], [12, 13, 99], [13, 99, 99]]
    assert make_windows(ids, mask, 3).targets.tolist() == [[11, 12, 13]]  # default: full windows only
