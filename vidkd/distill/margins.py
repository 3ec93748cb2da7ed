"""Margin heads of face recognition (L_FR, METHODS.md 5 and 6): a class-centre matrix `W` `[K, D]` and a loss on
the cosines `cos theta_k = <e / |e|, W_k / |W_k|>` of an embedding `e` with each identity's centre. Training-only:
a face model's output is its embedding, compared by cosine. `head(embedding, labels)` returns `(loss, logits)`,
`logits = s cos theta` without margin (for accuracy on the training identities).

- ArcFace (Deng et al., CVPR 2019), s = 64, m = 0.5: `L = CE(s cos(theta_y + m), s cos theta_i)`; where `theta_y + m`
  would pass pi (`cos theta_y <= cos(pi - m)`), `cos theta_y - m sin m` (its usual continuation), so the target
  logit keeps falling as the angle grows.
- CosFace (Wang et al., CVPR 2018), s = 64, m = 0.35: `L = CE(s (cos theta_y - m), s cos theta_i)`.
- SphereFace2-C (Wen et al., ICLR 2022), r = 40, m = 0.4, lambda = 0.7, t = 3: one binary problem per identity,
  `g(z) = 2 ((z + 1) / 2)^t - 1`,
  `L = w [lambda / r log(1 + exp(-(r (g(cos theta_y) - m) + b))) + (1 - lambda) / r sum_{i != y} log(1 + exp(r (g(cos
  theta_i) + m) + b))]`, b learnable; w = 50 (the loss weight of SphereFace2's own training, which offsets 1 / r).
  b starts where the positive term's and the negatives' gradients balance on random centres (all cosines 0):
  `lambda sigmoid(-(r (g(0) - m) + b)) = (1 - lambda)(K - 1) sigmoid(r (g(0) + m) + b)`, solved by bisection.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class MarginHead(nn.Module):
    def __init__(self, dim, classes):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, dim))
        nn.init.normal_(self.weight, std=0.01)

    def cosines(self, embedding):
        """`[B, K]` cosines, in fp32."""
        return F.linear(F.normalize(embedding.float(), dim=1), F.normalize(self.weight.float(), dim=1))


class ArcFace(MarginHead):
    def __init__(self, dim, classes, s=64.0, m=0.5):
        super().__init__(dim, classes)
        self.s, self.m = s, m

    def forward(self, embedding, labels):
        cos = self.cosines(embedding)
        target = cos.gather(1, labels[:, None]).clamp(-1, 1)
        sin = (1 - target**2).clamp(min=0).sqrt()
        shifted = torch.where(target > math.cos(math.pi - self.m),
                              target * math.cos(self.m) - sin * math.sin(self.m),  # cos(theta_y + m)
                              target - self.m * math.sin(self.m))
        logits = self.s * cos
        return F.cross_entropy(logits.scatter(1, labels[:, None], self.s * shifted), labels), logits


class CosFace(MarginHead):
    def __init__(self, dim, classes, s=64.0, m=0.35):
        super().__init__(dim, classes)
        self.s, self.m = s, m

    def forward(self, embedding, labels):
        logits = self.s * self.cosines(embedding)
        margin = F.one_hot(labels, logits.shape[1]) * (self.s * self.m)  # s (cos theta_y - m)
        return F.cross_entropy(logits - margin, labels), logits


def balanced_bias(classes, r, m, lam, t):
    """b with `lambda sigmoid(-(a_y + b)) = (1 - lambda)(K - 1) sigmoid(a_i + b)`, a_y = r (g(0) - m),
    a_i = r (g(0) + m): the left side falls and the right rises with b, so bisection finds it."""
    g0 = 2 * 0.5**t - 1
    a_y, a_i = r * (g0 - m), r * (g0 + m)

    def excess(b):
        return lam * torch.sigmoid(torch.tensor(-(a_y + b), dtype=torch.float64)) - (1 - lam) * (classes - 1) * \
            torch.sigmoid(torch.tensor(a_i + b, dtype=torch.float64))

    lo, hi = -10 * r - 100.0, 10 * r + 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


class SphereFace2(MarginHead):
    def __init__(self, dim, classes, r=40.0, m=0.4, lam=0.7, t=3.0, weight=50.0):
        super().__init__(dim, classes)
        self.r, self.m, self.lam, self.t, self.loss_weight = r, m, lam, t, weight
        self.bias = nn.Parameter(torch.tensor([balanced_bias(classes, r, m, lam, t)]))

    def forward(self, embedding, labels):
        cos = self.cosines(embedding)
        g = 2 * ((cos + 1) / 2) ** self.t - 1  # g(cos theta)
        positive = F.one_hot(labels, cos.shape[1]).bool()
        b = self.bias.float()
        pos = F.softplus(-(self.r * (g - self.m) + b))  # log(1 + exp(-(r (g - m) + b)))
        neg = F.softplus(self.r * (g + self.m) + b)  # log(1 + exp(r (g + m) + b))
        per_sample = (self.lam * pos * positive + (1 - self.lam) * neg * ~positive).sum(1) / self.r
        return self.loss_weight * per_sample.mean(), self.r * cos


HEADS = {"arcface": ArcFace, "cosface": CosFace, "sphereface2": SphereFace2}
