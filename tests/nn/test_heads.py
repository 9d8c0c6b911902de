"""Classifier heads: per-time-step logits (task A), masked mean over valid steps (task B) and the
end-to-end SequenceClassifier."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from cropstar.nn import FinalStateHead, PerSequenceHead, PerTimestepHead, SequenceClassifier, make_rnn

B, T, I, H, C = 3, 5, 4, 6, 7


def manual_masked_mean(outputs: Tensor, mask: Tensor) -> Tensor:
    rows = []
    for b in range(outputs.shape[0]):
        valid = [outputs[b, t] for t in range(outputs.shape[1]) if mask[b, t]]
        rows.append(torch.stack(valid).mean(dim=0) if valid else torch.zeros(outputs.shape[-1]))
    return torch.stack(rows)


def test_per_sequence_head_averages_only_valid_steps() -> None:
    head = PerSequenceHead(H, C)
    outputs = torch.randn(B, T, H)
    mask = torch.tensor(
        [[True, False, True, True, False], [False, False, False, False, True], [True] * T], dtype=torch.bool
    )
    logits = head(outputs, mask)
    assert logits.shape == (B, C)
    expected = head.linear(manual_masked_mean(outputs, mask))
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=0)
    # values on masked steps do not matter at all
    poisoned = outputs.clone()
    poisoned[~mask] = 1e4
    torch.testing.assert_close(head(poisoned, mask), logits, atol=1e-6, rtol=0)
    # ... but valid steps do
    changed = outputs.clone()
    changed[0, 2] += 1.0
    assert not torch.allclose(head(changed, mask)[0], logits[0])


def test_per_sequence_head_without_mask_is_the_plain_mean() -> None:
    head = PerSequenceHead(H, C)
    outputs = torch.randn(B, T, H)
    torch.testing.assert_close(head(outputs), head.linear(outputs.mean(dim=1)), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        head(outputs, torch.ones(B, T, dtype=torch.bool)), head(outputs), atol=1e-6, rtol=0
    )


def test_fully_masked_sequence_gives_finite_logits() -> None:
    head = PerSequenceHead(H, C)
    outputs = torch.randn(B, T, H, requires_grad=True)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1] = False
    logits = head(outputs, mask)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits[1], head.linear.bias, atol=0, rtol=0)  # zero features → the bias
    logits.sum().backward()
    assert torch.isfinite(outputs.grad).all()
    assert torch.equal(outputs.grad[1], torch.zeros(T, H))
    assert (outputs.grad[0] != 0).any()


def test_per_timestep_head() -> None:
    head = PerTimestepHead(H, C)
    outputs = torch.randn(B, T, H)
    logits = head(outputs, torch.ones(B, T, dtype=torch.bool))
    assert logits.shape == (B, T, C)
    for t in range(T):  # each step classified on its own
        torch.testing.assert_close(logits[:, t], head.linear(outputs[:, t]), atol=1e-6, rtol=0)
    assert torch.equal(head(outputs), logits)


@pytest.mark.parametrize("cell", ["star", "lstm"])
@pytest.mark.parametrize("head_cls", [PerSequenceHead, PerTimestepHead])
def test_sequence_classifier_end_to_end(cell: str, head_cls: type[nn.Module]) -> None:
    rnn = make_rnn(cell, I, H, 2, t_max=T)
    model = SequenceClassifier(rnn, head_cls(H, C))
    x = torch.randn(B, T, I)
    mask = torch.tensor([[True, True, False, True, True], [True] * T, [False, True, True, True, False]])
    logits = model(x, mask)
    if head_cls is PerSequenceHead:
        assert model.task == "per_sequence"
        assert logits.shape == (B, C)
    else:
        assert model.task == "per_timestep"
        assert logits.shape == (B, T, C)
    # exactly the RNN (with the mask) followed by the head (with the mask)
    outputs, _ = rnn(x, mask=mask)
    torch.testing.assert_close(logits, model.head(outputs, mask), atol=0, rtol=0)
    # the mask reaches the RNN: it changes the logits
    assert not torch.allclose(model(x), logits)
    # trainable end to end: every parameter gets a finite gradient
    logits.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad.abs().sum() > 0 for p in model.head.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.rnn.layers[0].parameters())


def test_classifier_task_of_a_custom_head() -> None:
    class Custom(nn.Module):
        def forward(self, outputs: Tensor, mask: Tensor | None = None) -> Tensor:
            return outputs[:, -1]

    model = SequenceClassifier(make_rnn("gru", I, H, 1), Custom())
    assert model.task == "custom"
    assert model(torch.randn(B, T, I)).shape == (B, H)
    assert PerSequenceHead.task == "per_sequence" and PerTimestepHead.task == "per_timestep"


def test_final_state_head_reads_the_last_valid_step() -> None:
    torch.manual_seed(0)
    rnn = make_rnn("star", I, H, 2)
    head = FinalStateHead(H, C)
    x = torch.randn(B, T, I)
    mask = torch.tensor([[True, True, False, True, False], [True] * T, [True, False, False, False, False]])
    outputs, _ = rnn(x, mask=mask)
    logits = head(outputs, mask)
    for b, last in enumerate((3, T - 1, 0)):
        trimmed, _ = rnn(x[b : b + 1, : last + 1][:, mask[b, : last + 1]])
        torch.testing.assert_close(logits[b], head.linear(trimmed[0, -1]), atol=1e-6, rtol=0)
    assert head.task == "per_sequence"
