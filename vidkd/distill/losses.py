"""The logit and feature losses every vidkd method is built from (METHODS.md section 1).

Pure functions of tensors, plus FitNet's regressor. Every loss
- casts its inputs to fp32 first, so bf16 / fp16 activations give an fp32 loss;
- takes logs of probabilities with `log_softmax`, never `log(softmax)`;
- is averaged over the batch ("batchmean": summed over classes as its equation says, then averaged over
  samples); the `*_per_sample` functions return `[B]` instead, for callers that weight samples (DATW);
- leaves stop-gradient to the caller: pass the teacher's tensors detached or computed under `no_grad`.
Logits are `[B, K]`, labels `y` are `[B]` class indices, features `[B, C, T, H, W]` or `[B, C, H, W]`.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

HCL_GRIDS = (4, 2, 1)  # pooled grids; the full map has weight 1, each grid used half the weight of the one before
DKD_MASK = 1000.0  # NCKD pushes the target logit down by this much, removing the target class


# --- logits -----------------------------------------------------------------------------------------------

def log_probs(z, T=1.0):
    """`log softmax(z / T)` over classes, in fp32."""
    return F.log_softmax(z.float() / T, dim=1)


def kl_log_probs(log_p, log_q):
    """`KL(p || q) = sum_c p_c (log p_c - log q_c)` per sample `[B]`, from log-probabilities `[B, K]`."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(1)


def kl_per_sample(z_target, z_s, T=1.0):
    """`KL(softmax(z_target / T) || softmax(z_s / T))` per sample `[B]`, WITHOUT the `T^2` factor
    (DATW's discrepancy `d_k = KL(p_k || p_s)`; `kd_loss` multiplies by `T^2`)."""
    return kl_log_probs(log_probs(z_target, T), log_probs(z_s, T))


def kd_loss(z_s, z_t, T=4.0):
    """Hinton's KD: `T^2 * KL(p_t || p_s)`, batch mean."""
    return T**2 * kl_per_sample(z_t, z_s, T).mean()  # L_KD = T^2 * KL(p_t || p_s)


def binary_log_probs(z, y, T=1.0):
    """`[log p[y], log(1 - p[y])]` of `p = softmax(z / T)`, `[B, 2]`, computed stably:
    `log(1 - p[y]) = logsumexp_{c != y}(z_c / T) - logsumexp_c(z_c / T)` (no `1 - p` that rounds to 0)."""
    z = z.float() / T
    target = z.gather(1, y[:, None])
    others = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).logsumexp(1, keepdim=True)
    return F.log_softmax(torch.cat([target, others], dim=1), dim=1)


def dkd_per_sample(z_s, z_t, y, T=4.0):
    """DKD's two parts per sample, `(TCKD [B], NCKD [B])`, each with its `T^2` factor."""
    # TCKD = T^2 * KL([p_t[y], 1 - p_t[y]] || [p_s[y], 1 - p_s[y]])
    tckd = T**2 * kl_log_probs(binary_log_probs(z_t, y, T), binary_log_probs(z_s, y, T))
    mask = DKD_MASK * F.one_hot(y, z_s.shape[1]).float()
    # NCKD = T^2 * KL(softmax((z_t - 1000 * onehot) / T) || softmax((z_s - 1000 * onehot) / T))
    nckd = T**2 * kl_per_sample(z_t.float() - mask, z_s.float() - mask, T)
    return tckd, nckd


def dkd_loss(z_s, z_t, y, alpha=1.0, beta=8.0, T=4.0):
    """Decoupled KD (Zhao et al., CVPR 2022) without its warm-up: `alpha * TCKD + beta * NCKD`, batch mean.
    The caller multiplies by `dkd_warmup(epoch)`. Per sample at any `T`, with `p_t` at that `T`:
    `KL(p_t || p_s) T^2 = TCKD + (1 - p_t[y]) * NCKD`, so KD is DKD with a sample-dependent NCKD weight."""
    tckd, nckd = dkd_per_sample(z_s, z_t, y, T)
    return (alpha * tckd + beta * nckd).mean()  # L_DKD (before warm-up) = alpha * TCKD + beta * NCKD


def dkd_warmup(epoch, warmup=20):
    """DKD's warm-up factor `min(epoch / warmup, 1)` (1 when `warmup <= 0`). `epoch` is counted as the caller
    counts it: mdistiller counts from 1, so its first epoch gets `1 / warmup`; counting from 0 gives 0."""
    return 1.0 if warmup <= 0 else min(epoch / warmup, 1.0)


def ofa_loss(z_s, z_t, y, eps=1.5, T=1.0):
    """OFA's loss (Hao et al., NeurIPS 2023) as its reference code computes it, batch mean (no `T^2`).
    On the target class the weight is `(1 + p_t[y])^eps - 1`, elsewhere `p_t,c^eps`: `eps > 1` puts more of the
    teacher's target probability into the loss. With `eps = 1` the one-hot cancels, leaving
    `-sum_c p_t,c log p_s,c = KL(p_t || p_s) + H(p_t)`: KD at `T` (without `T^2`) plus the teacher's entropy,
    which is constant in the student. There is no CE inside: METHODS.md's "eps = 1 is KD plus CE" holds once
    the caller adds its separate CE term, as OFA's reference training does."""
    onehot = F.one_hot(y, z_s.shape[1]).float()
    p_t = F.softmax(z_t.float() / T, dim=1)
    weight = (p_t + onehot) ** eps - onehot
    # L_OFA = mean_b sum_c -[(p_t + onehot)^eps - onehot]_c * log p_s,c
    return -(weight * log_probs(z_s, T)).sum(1).mean()


# --- features ---------------------------------------------------------------------------------------------

def _same_shape(a, b, name):
    if a.shape != b.shape:  # F.mse_loss would broadcast silently
        raise ValueError(f"{name}: student {tuple(a.shape)} and teacher {tuple(b.shape)} differ in shape")


def fitnet_loss(f_s, f_t):
    """FitNet: mean squared error over all elements; `f_s` is the regressed student map, `r(f_s)`."""
    _same_shape(f_s, f_t, "fitnet_loss")
    return F.mse_loss(f_s.float(), f_t.float())  # L_FitNet = MSE(r(f_s), f_t)


class Regressor(nn.Module):
    """FitNet's regressor `r`: a 1x1x1 convolution from the student's `in_channels` to the teacher's
    `out_channels`. `[B, C_s, T, H, W] -> [B, C_t, T, H, W]`; a 4D `[B, C_s, H, W]` map goes through the same
    weights as a 1x1 2D convolution. Bring the grids together first with `match_grid`."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, f):
        if f.dim() == 5:
            return self.conv(f)
        if f.dim() == 4:
            return F.conv2d(f, self.conv.weight[..., 0], self.conv.bias)
        raise ValueError(f"Regressor takes [B, C, T, H, W] or [B, C, H, W] maps, got {tuple(f.shape)}")


def match_grid(f, size):
    """`f` adaptively average-pooled to `size`: `(T, H, W)` for `[B, C, T, H, W]`, `(H, W)` for `[B, C, H, W]`.
    A size larger than the map repeats its cells. Returns `f` itself when it already has that size."""
    size = tuple(size)
    if tuple(f.shape[2:]) == size:
        return f
    if f.dim() == 5:
        return F.adaptive_avg_pool3d(f, size)
    if f.dim() == 4:
        return F.adaptive_avg_pool2d(f, size)
    raise ValueError(f"match_grid takes [B, C, T, H, W] or [B, C, H, W] maps, got {tuple(f.shape)}")


def hcl_loss(f_s, f_t):
    """HCL (ReviewKD's hierarchical context loss, as PAT's and ReviewKD's code compute it) on one pair of maps
    `[B, C, H, W]` or `[B, C, T, H, W]`.

    `(MSE(f_s, f_t) + sum_g w_g MSE(pool_g f_s, pool_g f_t)) / (1 + sum_g w_g)` over the pooled grids
    `g = 4, 2, 1` smaller than the map (each `g >= min(H, W)` is skipped), the weight halving for each grid used:
    the first gets 1/2, the next 1/4, the next 1/8 (METHODS.md 1: a 4x4 map uses grids 2 and 1 at 1/2 and 1/4). A
    5D map is pooled to `g x g` in space and `min(T, g)` in time, so grid 1 is one global average and short clips
    are not stretched in time.
    """
    _same_shape(f_s, f_t, "hcl_loss")
    f_s, f_t = f_s.float(), f_t.float()
    loss, total, w = F.mse_loss(f_s, f_t), 1.0, 1.0
    side = min(f_s.shape[-2:])
    for g in HCL_GRIDS:
        if g >= side:
            continue
        w /= 2
        size = (g, g) if f_s.dim() == 4 else (min(f_s.shape[2], g), g, g)
        loss = loss + w * F.mse_loss(match_grid(f_s, size), match_grid(f_t, size))
        total += w
    return loss / total  # L_HCL = (MSE + sum_g w_g MSE_g) / (1 + sum_g w_g)


# --- relations between samples (RKD) ----------------------------------------------------------------------

def rkd_terms(e_s, e_t):
    """Park et al.'s RKD distance and angle terms, unweighted, as their reference code averages them.

    Embeddings `[B, D]` (trailing dims flattened; `D` may differ between the sides). Distance: the `B x B`
    pairwise euclidean distances of each side, divided by the mean of its positive entries, compared by Huber
    (smooth L1, delta 1) averaged over all `B^2` entries. Angle: for every triplet `(a, b, c)` the cosine of
    the angle at `a`, `<(e_b - e_a) / |e_b - e_a|, (e_c - e_a) / |e_c - e_a|>` (0 when `b = a` or `c = a`),
    compared by Huber averaged over all `B^3` entries. Both are invariant to scaling either side's embeddings.
    """
    e_s, e_t = e_s.float().flatten(1), e_t.float().flatten(1)
    if len(e_s) != len(e_t):
        raise ValueError(f"rkd_terms: student batch {len(e_s)} and teacher batch {len(e_t)} differ")
    diff_s, diff_t = _differences(e_s), _differences(e_t)
    dist = F.smooth_l1_loss(_normalised_distances(diff_s), _normalised_distances(diff_t))  # Huber(psi_D^s, psi_D^t)
    angle = F.smooth_l1_loss(_angle_cosines(diff_s), _angle_cosines(diff_t))  # Huber(psi_A^s, psi_A^t)
    return dist, angle


def rkd_loss(e_s, e_t, w_dist=25.0, w_angle=50.0):
    """RKD (Park et al., CVPR 2019): `w_dist * distance term + w_angle * angle term` (see `rkd_terms`)."""
    dist, angle = rkd_terms(e_s, e_t)
    return w_dist * dist + w_angle * angle  # L_RKD = 25 * L_dist + 50 * L_angle


def _differences(e):
    """`[B, B, D]` with entry `(a, b)` = `e_b - e_a`."""
    return e[None, :, :] - e[:, None, :]


def _normalised_distances(diff):
    d = diff.norm(dim=2)  # d_ab = |e_a - e_b|, 0 on the diagonal (with a zero gradient there)
    positive = d > 0
    mean = (d * positive).sum() / positive.sum().clamp(min=1)  # mu = mean of the positive distances
    return d / mean.clamp(min=1e-12)  # psi_D = d_ab / mu


def _angle_cosines(diff):
    unit = F.normalize(diff, dim=2)  # (e_b - e_a) / |e_b - e_a|
    return torch.bmm(unit, unit.transpose(1, 2)).flatten()  # psi_A(a, b, c) = <unit_ab, unit_ac>


def crd_nce(v, bank, rows, tau):
    """CRD's softmax-form contrastive loss, batch mean: `-log softmax(v_b . M[rows_b] / tau)_0` for unit vectors
    `v` `[B, D]`, a memory bank `M` `[N, D]` and `rows` `[B, 1 + K]`, each row's positive first."""
    logits = torch.einsum("bd,bkd->bk", v, bank[rows]) / tau  # v . M[rows] / tau
    return F.cross_entropy(logits, torch.zeros(len(v), dtype=torch.long, device=v.device))


@torch.no_grad()
def bank_update(bank, rows, v, momentum):
    """In place: `M[i] <- normalise(m M[i] + (1 - m) v_i)` for each row i of `rows`."""
    bank[rows] = F.normalize(momentum * bank[rows] + (1 - momentum) * v.detach().float(), dim=1)


def info_nce(a, b, scale):
    """Symmetric InfoNCE between two views of one batch (the same image's pair positive, the batch's other items
    negatives), batch mean: `(CE(s * a b^T, I) + CE(s * b a^T, I)) / 2` for unit vectors `a`, `b` `[B, D]` and
    `s = 1 / tau`."""
    logits = scale * a.float() @ b.float().T  # a_i . b_j / tau
    labels = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


# --- face embeddings (METHODS.md 6) -----------------------------------------------------------------------------

def iled_loss(e_s, e_t, r=40.0, s=0.9, b=0.1):
    """ILED, batch mean: `(1 / r) log(1 + exp(r (s - cos_i))) + b (1 - cos_i)`, `cos_i = <e_s,i, e_t,i>` of the
    L2-normalised embeddings: a soft hinge at s whose gradient goes mostly to the hard samples (low cos_i)."""
    cos = (F.normalize(e_s.float(), dim=1) * F.normalize(e_t.float(), dim=1)).sum(1)
    return (F.softplus(r * (s - cos)) / r + b * (1 - cos)).mean()


def rpsd_loss(e_s, e_t, bank_s, bank_t, r=60.0, t=0.05, b=1.0):
    """RPSD, mean over the `B x M` pairs: `(b / r) log(1 + exp(r (delta - t)))`, `delta = |E_s M_s^T - E_t M_t^T|`:
    each sample's similarities to the memory bank's past embeddings (`bank_s`, `bank_t` `[M, D]`, unit vectors),
    the student's against the teacher's."""
    sim_s = F.normalize(e_s.float(), dim=1) @ bank_s.float().T  # S_s = E_s M_s^T
    sim_t = F.normalize(e_t.float(), dim=1) @ bank_t.float().T  # S_t = E_t M_t^T
    return (b / r * F.softplus(r * ((sim_s - sim_t).abs() - t))).mean()
