"""RPSD's FIFO memory bank: first in, first out, and a bit-identical round trip through a checkpoint file."""
import torch

from vidkd.distill.memory import FifoBank


def rows(*values):
    return torch.tensor([[float(v), -float(v)] for v in values])


def test_the_bank_keeps_the_last_vectors_oldest_first(tmp_path):
    bank = FifoBank(4, 2)
    bank.push(rows(1, 2))
    assert torch.equal(bank.contents(), rows(1, 2))  # not yet full: only what was pushed
    bank.push(rows(3, 4))
    bank.push(rows(5, 6))  # 1 and 2 leave first
    assert torch.equal(bank.contents(), rows(3, 4, 5, 6))
    bank.push(rows(7))
    assert torch.equal(bank.contents(), rows(4, 5, 6, 7))
    bank.push(rows(8, 9, 10, 11, 12))  # more than it holds: the last 4
    assert torch.equal(bank.contents(), rows(9, 10, 11, 12))
    torch.save(bank.state(), tmp_path / "bank.pt")
    restored = FifoBank(4, 2)
    restored.load(torch.load(tmp_path / "bank.pt", weights_only=True))
    restored.push(rows(13))
    bank.push(rows(13))
    assert torch.equal(restored.contents(), bank.contents()) and torch.equal(restored.contents(), rows(10, 11, 12, 13))
