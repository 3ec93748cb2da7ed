"""Margin heads (ArcFace, CosFace, SphereFace2) against hand-computed values on a 2-class, 2-d example:
embedding (0.6, 0.8), class centres the axes, so the cosines are 0.6 (class 0) and 0.8 (class 1)."""
import math

import pytest
import torch

from vidkd.distill.margins import ArcFace, CosFace, SphereFace2, balanced_bias

E = torch.tensor([[0.6, 0.8]])
Y = torch.tensor([0])


def axes(head):
    with torch.no_grad():
        head.weight.copy_(torch.eye(2) * 3)  # norms do not matter
    return head


def ce(target, other):
    return math.log(math.exp(target) + math.exp(other)) - target


def test_cosface_by_hand():
    loss, logits = axes(CosFace(2, 2, s=2.0, m=0.5))(E, Y)
    assert loss.item() == pytest.approx(ce(2 * (0.6 - 0.5), 2 * 0.8), rel=1e-6)
    assert torch.allclose(logits, torch.tensor([[1.2, 1.6]]))  # s cos theta, no margin


def test_arcface_by_hand_and_past_pi():
    head = axes(ArcFace(2, 2, s=2.0, m=0.5))
    shifted = math.cos(math.acos(0.6) + 0.5)
    assert head(E, Y)[0].item() == pytest.approx(ce(2 * shifted, 2 * 0.8), rel=1e-5)
    far = torch.tensor([[-0.95, math.sqrt(1 - 0.95**2)]])  # theta_y + m would pass pi: cos theta_y - m sin m
    assert head(far, Y)[0].item() == pytest.approx(ce(2 * (-0.95 - 0.5 * math.sin(0.5)), 2 * far[0, 1].item()),
                                                   rel=1e-5)


def test_sphereface2_by_hand():
    head = axes(SphereFace2(2, 2, r=2.0, m=0.5, lam=0.7, t=3.0, weight=1.0))
    with torch.no_grad():
        head.bias.fill_(0.3)
    g_y, g_i = 2 * 0.8**3 - 1, 2 * 0.9**3 - 1  # g(0.6), g(0.8)

    def softplus(x):
        return math.log(1 + math.exp(x))

    want = (0.7 * softplus(-(2 * (g_y - 0.5) + 0.3)) + 0.3 * softplus(2 * (g_i + 0.5) + 0.3)) / 2
    assert head(E, Y)[0].item() == pytest.approx(want, rel=1e-6)


def test_sphereface2s_bias_starts_where_the_gradients_balance():
    assert balanced_bias(2, r=1.0, m=0.0, lam=0.5, t=1.0) == pytest.approx(0.0, abs=1e-9)  # symmetric: 0
    b = balanced_bias(1000, r=40.0, m=0.4, lam=0.7, t=3.0)
    a_y, a_i = 40 * (2 * 0.5**3 - 1 - 0.4), 40 * (2 * 0.5**3 - 1 + 0.4)

    def sigmoid(x):
        return 1 / (1 + math.exp(-x))

    assert 0.7 * sigmoid(-(a_y + b)) == pytest.approx(0.3 * 999 * sigmoid(a_i + b), rel=1e-6)
