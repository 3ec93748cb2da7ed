"""A FIFO memory bank of past embeddings (RPSD's, METHODS.md 6): the last `size` vectors pushed, oldest first."""
import torch


class FifoBank:
    """A ring buffer `[size, D]` with its write position and fill count; `state()` and `load()` give and take
    them as tensors (method state, saved per rank)."""

    def __init__(self, size, dim, device=None):
        self.data = torch.zeros(size, dim, device=device)
        self.position, self.count = 0, 0

    def push(self, vectors):
        """Add the rows of `vectors` (detached, fp32), overwriting the oldest once full; a batch larger than the bank
        keeps its last `size` rows."""
        size = len(self.data)
        vectors = vectors.detach().float()[-size:]
        rows = (self.position + torch.arange(len(vectors), device=self.data.device)) % size
        self.data[rows] = vectors
        self.position = (self.position + len(vectors)) % size
        self.count = min(self.count + len(vectors), size)

    def contents(self):
        """The vectors held, oldest first, `[count, D]`."""
        if self.count < len(self.data):
            return self.data[: self.count]
        return self.data.roll(-self.position, 0)

    def state(self):
        return {"data": self.data, "meta": torch.tensor([self.position, self.count])}

    def load(self, state):
        self.data = state["data"].to(self.data.device)
        self.position, self.count = (int(x) for x in state["meta"])
