"""Golden-value tests of vidkd.distill.losses: every expected number is worked out by hand in the comments.

Logits are chosen as `z = 4 * ln(a)` so that softmax(z / 4) = a / sum(a) and softmax(z) = a^4 / sum(a^4):
simple fractions at both T = 4 and T = 1.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from vidkd.distill import losses as L

LN2, LN3 = math.log(2), math.log(3)


def logits(*rows):
    """`4 * ln(a)` per row: softmax at T = 4 gives a / sum(a)."""
    return 4 * torch.tensor(rows, dtype=torch.float64).log().float()


# sample 0: teacher a = [2, 1, 1], student a = [1, 2, 1]; sample 1: teacher uniform, student a = [2, 1, 1]
Z_T = logits([2, 1, 1], [1, 1, 1])
Z_S = logits([1, 2, 1], [2, 1, 1])


def close(value, expected, tol=1e-5):
    assert float(value) == pytest.approx(expected, rel=tol, abs=tol)


# --- KD -------------------------------------------------------------------------------------------------------

def test_kd_at_t1_by_hand():
    # T = 1: p = a^4 / sum(a^4).
    # sample 0: p_t = [16, 1, 1] / 18, p_s = [1, 16, 1] / 18
    #   KL = 16/18 ln 16 + 1/18 ln(1/16) + 1/18 ln 1 = 15/18 * 4 ln 2 = 10/3 ln 2
    # sample 1: p_t = [1, 1, 1] / 3, p_s = [16, 1, 1] / 18
    #   KL = sum 1/3 ln((1/3) / q) = -ln 3 - 1/3 (ln 16 - 3 ln 18) = -ln 3 - 4/3 ln 2 + ln 2 + 2 ln 3 = ln 3 - 1/3 ln 2
    # KD = T^2 * mean = ((10/3 - 1/3) ln 2 + ln 3) / 2 = (3 ln 2 + ln 3) / 2 = ln(24) / 2
    close(L.kd_loss(Z_S, Z_T, T=1.0), math.log(24) / 2)


def test_kd_at_t4_by_hand():
    # T = 4: p = a / sum(a).
    # sample 0: p_t = [1/2, 1/4, 1/4], p_s = [1/4, 1/2, 1/4]
    #   KL = 1/2 ln 2 + 1/4 ln(1/2) + 0 = 1/4 ln 2
    # sample 1: p_t = [1/3, 1/3, 1/3], p_s = [1/2, 1/4, 1/4]
    #   KL = -ln 3 - 1/3 (ln(1/2) + 2 ln(1/4)) = -ln 3 + 5/3 ln 2
    # KD = 16 * (1/4 ln 2 + 5/3 ln 2 - ln 3) / 2 = 8 * (23/12 ln 2 - ln 3) = 46/3 ln 2 - 8 ln 3
    close(L.kd_loss(Z_S, Z_T, T=4.0), 46 / 3 * LN2 - 8 * LN3)
    close(L.kd_loss(Z_S, Z_T), 46 / 3 * LN2 - 8 * LN3)  # T = 4 is the default


def test_kl_per_sample_has_no_t_squared():
    # the per-sample KLs of test_kd_at_t4_by_hand, without the factor 16
    per_sample = L.kl_per_sample(Z_T, Z_S, T=4.0)
    assert per_sample.shape == (2,)
    close(per_sample[0], LN2 / 4)
    close(per_sample[1], 5 / 3 * LN2 - LN3)


def test_kd_is_zero_for_equal_logits():
    z = torch.randn(5, 7) * 3
    assert abs(float(L.kd_loss(z, z.clone()))) < 1e-6


def test_kd_is_stable_for_large_logits():
    z_s = torch.tensor([[200.0, -200.0, 0.0]])
    z_t = torch.tensor([[-200.0, 200.0, 0.0]])
    # T = 1: p_t is one-hot on class 1 (to ~e^-200); log p_s[1] = -400, so KL = 0 - (-400) = 400
    close(L.kd_loss(z_s, z_t, T=1.0), 400.0, tol=1e-4)


# --- DKD ------------------------------------------------------------------------------------------------------

Y = torch.tensor([0, 1])


def test_dkd_parts_by_hand():
    # T = 4: probabilities as in test_kd_at_t4_by_hand.
    # sample 0, y = 0: p_t = [1/2, 1/4, 1/4], p_s = [1/4, 1/2, 1/4]
    #   TCKD = 16 KL([1/2, 1/2] || [1/4, 3/4]) = 16 (1/2 ln 2 + 1/2 ln(2/3)) = 8 ln(4/3)
    #   non-target (classes 1, 2) renormalised: teacher [1/2, 1/2], student [1/2, 1/4] / (3/4) = [2/3, 1/3]
    #   NCKD = 16 (1/2 ln(3/4) + 1/2 ln(3/2)) = 8 ln(9/8)
    # sample 1, y = 1: p_t = [1/3, 1/3, 1/3], p_s = [1/2, 1/4, 1/4]
    #   TCKD = 16 KL([1/3, 2/3] || [1/4, 3/4]) = 16 (1/3 ln(4/3) + 2/3 ln(8/9))
    #   non-target (classes 0, 2): teacher [1/2, 1/2], student [1/2, 1/4] / (3/4) = [2/3, 1/3] -> 8 ln(9/8)
    tckd, nckd = L.dkd_per_sample(Z_S, Z_T, Y, T=4.0)
    tckd_1 = 16 * (math.log(4 / 3) / 3 + 2 / 3 * math.log(8 / 9))
    close(tckd[0], 8 * math.log(4 / 3))
    close(tckd[1], tckd_1)
    close(nckd[0], 8 * math.log(9 / 8))
    close(nckd[1], 8 * math.log(9 / 8))
    # defaults alpha = 1, beta = 8: mean over the two samples
    expected = (8 * math.log(4 / 3) + tckd_1) / 2 + 8 * 8 * math.log(9 / 8)
    close(L.dkd_loss(Z_S, Z_T, Y), expected)
    close(L.dkd_loss(Z_S, Z_T, Y, alpha=2.0, beta=0.0), 8 * math.log(4 / 3) + tckd_1)
    # the DKD paper's identity on sample 0: KD = TCKD + (1 - p_t[y]) NCKD
    #   4 ln 2 = 8 ln(4/3) + 1/2 * 8 ln(9/8) = 4 ln(16/9 * 9/8) = 4 ln 2
    close(8 * math.log(4 / 3) + 4 * math.log(9 / 8), 4 * LN2)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_decomposes_into_tckd_and_nckd(T):
    # per sample: T^2 KL(p_t || p_s) = TCKD + (1 - p_t[y]) * NCKD  (Zhao et al., eq. 1-3)
    g = torch.Generator().manual_seed(0)
    z_s, z_t = torch.randn(6, 10, generator=g) * 2, torch.randn(6, 10, generator=g) * 2
    y = torch.randint(0, 10, (6,), generator=g)
    tckd, nckd = L.dkd_per_sample(z_s, z_t, y, T=T)
    p_t_y = F.softmax(z_t / T, dim=1).gather(1, y[:, None])[:, 0]
    kd = T**2 * L.kl_per_sample(z_t, z_s, T)
    torch.testing.assert_close(tckd + (1 - p_t_y) * nckd, kd, rtol=1e-5, atol=1e-6)
    # so DKD with alpha = beta = 1 is not KD: it weighs NCKD by 1 instead of 1 - p_t[y] < 1
    assert float(L.dkd_loss(z_s, z_t, y, alpha=1.0, beta=1.0, T=T)) > float(L.kd_loss(z_s, z_t, T=T)) + 1e-4


def test_tckd_is_stable_when_the_target_probability_is_one():
    # p_s[y] = 1 - ~e^-60 rounds to 1 in fp32; log(1 - p_s[y]) must still be ~ -60, not -inf
    z_s = torch.tensor([[60.0, 0.0, 0.0]])
    log_p = L.binary_log_probs(z_s, torch.tensor([0]), T=1.0)
    # log(1 - p[y]) = logsumexp(0, 0) - logsumexp(60, 0, 0) = ln 2 - 60 - ln(1 + 2 e^-60) ~ ln 2 - 60
    close(log_p[0, 1], LN2 - 60)
    close(log_p[0, 0], 0.0)


def test_dkd_warmup():
    assert L.dkd_warmup(0) == 0.0
    assert L.dkd_warmup(5) == 5 / 20
    assert L.dkd_warmup(20) == 1.0 and L.dkd_warmup(100) == 1.0
    assert L.dkd_warmup(3, warmup=0) == 1.0


# --- OFA ------------------------------------------------------------------------------------------------------

def test_ofa_by_hand():
    # sample 0 only, T = 4 so that p_t = [1/2, 1/4, 1/4], p_s = [1/4, 1/2, 1/4], y = 0, eps = 1.5:
    #   weight = (p_t + onehot)^1.5 - onehot = [1.5^1.5 - 1, (1/4)^1.5, (1/4)^1.5] = [1.5^1.5 - 1, 1/8, 1/8]
    #   loss = -[(1.5^1.5 - 1) ln(1/4) + 1/8 ln(1/2) + 1/8 ln(1/4)] = (1.5^1.5 - 1) 2 ln 2 + 3/8 ln 2
    expected = (1.5**1.5 - 1) * 2 * LN2 + 3 / 8 * LN2
    close(L.ofa_loss(Z_S[:1], Z_T[:1], Y[:1], eps=1.5, T=4.0), expected)


def test_ofa_with_eps_1_is_kd_up_to_the_teacher_entropy():
    # eps = 1: weight = (p_t + onehot)^1 - onehot = p_t, so
    #   L_OFA = -sum_c p_t,c log p_s,c = KL(p_t || p_s) + H(p_t) = KD(T = 1) + H(p_t)
    # the one-hot cancels: no CE inside (the reference code adds CE separately), and H(p_t) has no student in it,
    # so L_OFA(eps = 1) + CE has the value KD(T = 1) + CE + H(p_t) and exactly the gradient of KD(T = 1) + CE.
    g = torch.Generator().manual_seed(1)
    z_s = (torch.randn(4, 6, generator=g) * 2).requires_grad_()
    z_t = torch.randn(4, 6, generator=g) * 2
    y = torch.randint(0, 6, (4,), generator=g)
    ce = F.cross_entropy(z_s, y)
    ofa_ce = L.ofa_loss(z_s, z_t, y, eps=1.0) + ce
    kd_ce = L.kd_loss(z_s, z_t, T=1.0) + ce
    p_t = F.softmax(z_t, dim=1)
    entropy = -(p_t * p_t.log()).sum(1).mean()
    close(ofa_ce.detach(), float(kd_ce.detach() + entropy))
    (grad_ofa,) = torch.autograd.grad(ofa_ce, z_s, retain_graph=True)  # ce is shared
    (grad_kd_ce,) = torch.autograd.grad(kd_ce, z_s)
    torch.testing.assert_close(grad_ofa, grad_kd_ce)


# --- FitNet ---------------------------------------------------------------------------------------------------

def test_fitnet_mse_by_hand():
    f_s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # [1, 1, 2, 2]
    f_t = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    # differences 0, 2, 3, 4 -> (0 + 4 + 9 + 16) / 4 = 29 / 4
    close(L.fitnet_loss(f_s, f_t), 29 / 4)
    with pytest.raises(ValueError):
        L.fitnet_loss(f_s, f_t[..., :1])  # no silent broadcasting


def test_regressor_and_match_grid():
    reg = L.Regressor(3, 5)
    f5 = torch.randn(2, 3, 4, 6, 6)
    assert reg(f5).shape == (2, 5, 4, 6, 6)
    # a 4D map goes through the same weights: frame 0 of the 5D output
    torch.testing.assert_close(reg(f5[:, :, 0]), reg(f5)[:, :, 0])
    # match_grid: 4x4 -> 2x2 averages the 2x2 blocks
    m = torch.arange(16.0).view(1, 1, 4, 4)  # rows 0..3, 4..7, 8..11, 12..15
    # top-left block {0, 1, 4, 5} -> 2.5, top-right {2, 3, 6, 7} -> 4.5, bottom: 10.5, 12.5
    torch.testing.assert_close(L.match_grid(m, (2, 2)), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    assert L.match_grid(f5, (2, 3, 3)).shape == (2, 3, 2, 3, 3)
    assert L.match_grid(f5, (4, 6, 6)) is f5


# --- HCL ------------------------------------------------------------------------------------------------------

D = torch.tensor([[1.0, 3.0, 0.0, 0.0],
                  [1.0, 3.0, 0.0, 0.0],
                  [0.0, 0.0, 2.0, 2.0],
                  [0.0, 0.0, 2.0, 2.0]])
# HCL of f_s = f_t + D (pooling is linear, so each MSE is that of the pooled D), 4x4 map:
#   full:   mean(D^2) = (1 + 9 + 1 + 9 + 4 * 4) / 16 = 36 / 16 = 2.25              weight 1
#   grid 4: skipped (4 >= 4)
#   grid 2: block means [[2, 0], [0, 2]] -> mean of squares (4 + 0 + 0 + 4) / 4 = 2  weight 1/2 (the first used)
#   grid 1: mean(D) = 16 / 16 = 1 -> 1                                              weight 1/4
#   HCL = (2.25 + 2/2 + 1/4) / (1 + 1/2 + 1/4) = 3.5 / 1.75 = 2
HCL_4x4 = 2.0


def test_hcl_on_a_4x4_map_by_hand():
    f_t = torch.full((1, 1, 4, 4), 5.0)
    close(L.hcl_loss(f_t + D, f_t), HCL_4x4)


def test_hcl_5d_pools_space_and_time():
    # one frame: the 5D map pools to (min(1, g), g, g), the same numbers as the 4D map
    f_t = torch.full((1, 1, 1, 4, 4), 5.0)
    close(L.hcl_loss(f_t + D, f_t), HCL_4x4)
    # two frames, D and -D: full MSE 2.25; grid 2 -> (2, 2, 2) keeps frames apart: 2; grid 1 -> (1, 1, 1)
    # averages D and -D to 0: 0.  HCL = (2.25 + 2/2 + 0/4) / 1.75 = 3.25 / 1.75 = 13 / 7
    f_s = torch.stack([D, -D])[None, None]  # [1, 1, 2, 4, 4]
    close(L.hcl_loss(f_s, torch.zeros_like(f_s)), 13 / 7)


def test_hcl_on_an_8x8_map_uses_grid_4():
    # D repeated in 2x2 cells (8x8): full MSE 2.25; grid 4 gives D itself: 2.25 (weight 1/2);
    # grid 2: 2 (1/4); grid 1: 1 (1/8).  HCL = (2.25 + 1.125 + 0.5 + 0.125) / 1.875 = 4 / 1.875 = 32 / 15
    big = D.repeat_interleave(2, 0).repeat_interleave(2, 1)[None, None]
    close(L.hcl_loss(big, torch.zeros_like(big)), 32 / 15)


# --- RKD ------------------------------------------------------------------------------------------------------

E_S = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # a 3-4-5 right triangle
E_T = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # a 1-1-sqrt(2) right triangle
R2 = math.sqrt(2)
# distances (each pair twice in the 3x3 matrix, diagonal 0):
#   student 3, 4, 5; mean of the 6 positive entries = 24 / 6 = 4 -> 3/4, 1, 5/4
#   teacher 1, 1, sqrt2; mean = (2 + sqrt2) / 3 -> 3 / (2 + sqrt2) = 3 - 1.5 sqrt2 (twice), 3 sqrt2 - 3
#   differences all < 1, so Huber = x^2 / 2; the term averages 9 entries, each pair twice:
#   dist = 2 * sum(x^2 / 2) / 9 = sum(x^2) / 9
DIST = ((0.75 - (3 - 1.5 * R2)) ** 2 + (1 - (3 - 1.5 * R2)) ** 2 + (1.25 - (3 * R2 - 3)) ** 2) / 9
# angles: for vertex a, the 2x2 block of the other two points has 1 on its diagonal (same on both sides)
# and cos(angle at a) off it (twice); every other of the 27 entries is 0 on both sides.
#   vertex 0: student (3,0).(0,4) -> 0; teacher (1,0).(0,1) -> 0
#   vertex 1: student (-3,0).(-3,4) / (3 * 5) = 9/15 = 0.6; teacher (-1,0).(-1,1) / sqrt2 = 1/sqrt2
#   vertex 2: student (0,-4).(3,-4) / (4 * 5) = 16/20 = 0.8; teacher (0,-1).(1,-1) / sqrt2 = 1/sqrt2
#   angle = 2 * sum(x^2 / 2) / 27 = ((0.6 - 1/sqrt2)^2 + (0.8 - 1/sqrt2)^2) / 27
ANGLE = ((0.6 - 1 / R2) ** 2 + (0.8 - 1 / R2) ** 2) / 27


def test_rkd_terms_by_hand():
    dist, angle = L.rkd_terms(E_S, E_T)
    close(dist, DIST)
    close(angle, ANGLE)
    close(L.rkd_loss(E_S, E_T), 25 * DIST + 50 * ANGLE)
    close(L.rkd_loss(E_S, E_T, w_dist=1.0, w_angle=0.0), DIST)


def test_rkd_is_invariant_to_scale():
    g = torch.Generator().manual_seed(2)
    e_s, e_t = torch.randn(8, 16, generator=g), torch.randn(8, 32, generator=g)  # widths may differ
    base = float(L.rkd_loss(e_s, e_t))
    assert base > 0
    close(L.rkd_loss(7.5 * e_s, e_t), base, tol=1e-4)
    close(L.rkd_loss(e_s, 0.01 * e_t), base, tol=1e-4)
    assert abs(float(L.rkd_loss(3 * e_t, e_t))) < 1e-5  # same geometry, other scale: zero


# --- gradients and dtypes -------------------------------------------------------------------------------------

def _cases(s, t):
    """(name, fn(student, teacher)) for every loss, on logits / maps / embeddings made from `s`, `t` [4, 6]."""
    y = torch.tensor([0, 1, 2, 3])
    map_ = lambda x: x.reshape(4, 1, 1, 2, 3).repeat(1, 2, 2, 2, 2)  # [4, 2, 2, 4, 6]  # noqa: E731
    return [
        ("kd", lambda: L.kd_loss(s, t)),
        ("dkd", lambda: L.dkd_loss(s, t, y)),
        ("ofa", lambda: L.ofa_loss(s, t, y)),
        ("fitnet", lambda: L.fitnet_loss(s, t)),
        ("hcl", lambda: L.hcl_loss(map_(s), map_(t))),
        ("rkd", lambda: L.rkd_loss(s, t)),
    ]


@pytest.mark.parametrize("i", range(6))
def test_gradients_reach_the_student_only_when_the_teacher_is_detached(i):
    g = torch.Generator().manual_seed(3)
    s = torch.randn(4, 6, generator=g).requires_grad_()
    t = torch.randn(4, 6, generator=g).requires_grad_()
    name, loss = _cases(s, t.detach())[i]
    loss().backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0, name
    assert t.grad is None, name
    # the losses do not detach anything themselves: an undetached teacher gets a gradient
    name, loss = _cases(s, t)[i]
    loss().backward()
    assert t.grad is not None and t.grad.abs().sum() > 0, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_loss_is_fp32_for_half_inputs(dtype):
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(4, 6, generator=g).to(dtype), torch.randn(4, 6, generator=g).to(dtype)
    for name, loss in _cases(s, t):
        value = loss()
        assert value.dtype == torch.float32 and torch.isfinite(value), name
    assert L.kl_per_sample(t, s).dtype == torch.float32
    assert all(part.dtype == torch.float32 for part in L.dkd_per_sample(s, t, torch.tensor([0, 1, 2, 3])))


def test_crd_nce_by_hand():
    """Logits v . M[rows] / tau with the positive first: [2, 0, -2] and [2, 0, 0] at tau 0.5."""
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    rows = torch.tensor([[0, 1, 2], [1, 0, 0]])
    want = (math.log(1 + math.exp(-2) + math.exp(-4)) + math.log(1 + 2 * math.exp(-2))) / 2
    assert L.crd_nce(v, bank, rows, 0.5).item() == pytest.approx(want, rel=1e-6)


def test_the_memory_bank_moves_its_rows_towards_the_vectors_and_stays_unit():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    L.bank_update(bank, torch.tensor([0, 2]), torch.tensor([[0.0, 1.0], [-1.0, 0.0]]), 0.5)
    s = 1 / math.sqrt(2)
    assert torch.allclose(bank, torch.tensor([[s, s], [0.0, 1.0], [-1.0, 0.0]]))  # row 2: already v, unit
    L.bank_update(bank, torch.tensor([1]), torch.tensor([[1.0, 0.0]]), 0.9)  # 0.9 [0, 1] + 0.1 [1, 0], normalised
    assert torch.allclose(bank[1], torch.tensor([0.1, 0.9]) / math.hypot(0.1, 0.9))


def test_info_nce_by_hand():
    """a = I, b = [[0.6, 0.8], [1, 0]] at 1 / tau = 2: logits 2 a b^T = [[1.2, 2], [1.6, 0]], positives on the
    diagonal; the mean of the rows' CE and the columns' CE."""
    a, b = torch.eye(2), torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    rows = (math.log(math.exp(1.2) + math.exp(2)) - 1.2) + (math.log(math.exp(1.6) + 1) - 0)
    columns = (math.log(math.exp(1.2) + math.exp(1.6)) - 1.2) + (math.log(math.exp(2) + 1) - 0)
    assert L.info_nce(a, b, 2.0).item() == pytest.approx((rows / 2 + columns / 2) / 2, rel=1e-6)
    same = torch.eye(3)  # aligned pairs, far apart: each CE is log(1 + 2 e^{-s})
    assert L.info_nce(same, same, 5.0).item() == pytest.approx(math.log(1 + 2 * math.exp(-5)), rel=1e-6)


def test_iled_by_hand():
    """cos = 0.6 and 1.0 (r 10, s 0.9, b 0.1): (log(1 + e^{3}) / 10 + 0.04 + log(1 + e^{-1}) / 10) / 2."""
    e_s = torch.tensor([[0.6, 0.8], [2.0, 0.0]])
    e_t = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # norms do not matter
    want = (math.log(1 + math.exp(3)) / 10 + 0.1 * 0.4 + math.log(1 + math.exp(-1)) / 10) / 2
    assert L.iled_loss(e_s, e_t, r=10, s=0.9, b=0.1).item() == pytest.approx(want, rel=1e-6)


def test_rpsd_by_hand():
    """One sample, a bank of two: S_s = [0.6, 0.8], S_t = [1, 0] -> delta [0.4, 0.8]; r 10, t 0.05, b 1."""
    e_s, e_t = torch.tensor([[0.6, 0.8]]), torch.tensor([[1.0, 0.0]])
    bank = torch.eye(2)
    want = (math.log(1 + math.exp(10 * 0.35)) + math.log(1 + math.exp(10 * 0.75))) / 10 / 2
    assert L.rpsd_loss(e_s, e_t, bank, bank, r=10, t=0.05, b=1.0).item() == pytest.approx(want, rel=1e-6)
    assert L.rpsd_loss(e_t, e_t, bank, bank, r=60, t=0.05).item() < 1e-2  # the same relations: near 0
