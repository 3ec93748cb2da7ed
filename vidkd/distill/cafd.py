"""CAFD: cross-architecture face distillation (METHODS.md 5; paper 000). Here so far: URFM, the module that puts
teacher and student on the same receptive fields (the method itself, with APT and the margin loss, follows).

URFM, for one network's stage map `f` `[B, C, H, W]`: `L` learnable queries ("local centres", a sqrt(L) x sqrt(L)
grid of centres over the face) attend over the H x W pixel features,
    e_ij = (q_i W_q)(f_j W_k)^T / sqrt(d) + b_ij,   h = softmax_j(e) (f W_v),
with `b_ij = P[bucket(D(i, j))]`, `P` a learnable table over `buckets` distance buckets, and
    D(i, j) = |centre_i - pos_j| + gamma * D_face(i, j),
`D_face(i, j)`: the distance from pixel j to the landmark of the five-point face template (eyes, nose, mouth corners)
nearest centre i. Positions and distances are in units of the face's side (the aligned face is the unit square), a
bucket is `1 / buckets` of the square's diagonal wide, the last bucket takes every larger distance. Output: `h`
`[B, L, d]` and the attention `[B, L, H, W]`.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# ArcFace's five-point template of a 112 x 112 aligned face (x, y): left eye, right eye, nose, mouth corners
FACE_TEMPLATE = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041))


def unit_grid(h, w):
    """Centres of an h x w grid of cells of the unit square, `[h * w, 2]` as (x, y), row by row."""
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], 1)


def face_distances(queries, grid, gamma):
    """D `[L, H * W]`: each query centre's distance to each pixel, plus gamma times the pixel's distance to the
    template landmark nearest the centre."""
    side = math.isqrt(queries)
    centres, positions = unit_grid(side, side), unit_grid(*grid)
    landmarks = torch.tensor(FACE_TEMPLATE) / 112
    nearest = landmarks[torch.cdist(centres, landmarks).argmin(1)]  # [L, 2]: the landmark nearest each centre
    return torch.cdist(centres, positions) + gamma * torch.cdist(nearest, positions)


class URFM(nn.Module):
    def __init__(self, channels, dim, queries=49, buckets=32, gamma=1.0):
        super().__init__()
        if math.isqrt(queries) ** 2 != queries:
            raise ValueError(f"URFM: {queries} queries are not a square grid of centres")
        self.queries = nn.Parameter(torch.randn(queries, dim) * 0.02)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(channels, dim), nn.Linear(channels, dim)
        self.table = nn.Parameter(torch.zeros(buckets))  # P
        self.buckets, self.gamma, self._bucket_cache = buckets, gamma, {}

    def bucket_index(self, grid):
        """`[L, H * W]` bucket of each D(i, j) for a map of `grid` (fixed: computed once per grid)."""
        if grid not in self._bucket_cache:
            width = (1 + self.gamma) * math.sqrt(2) / self.buckets
            d = face_distances(len(self.queries), grid, self.gamma)
            self._bucket_cache[grid] = (d / width).long().clamp(max=self.buckets - 1)
        return self._bucket_cache[grid].to(self.table.device)

    def forward(self, f):
        b, _, h, w = f.shape
        pixels = f.flatten(2).transpose(1, 2)  # [B, H W, C]
        q = self.q(self.queries)  # q_i W_q
        logits = q @ self.k(pixels).transpose(1, 2) / math.sqrt(q.shape[-1])  # (q_i W_q)(f_j W_k)^T / sqrt(d)
        attention = F.softmax(logits + self.table[self.bucket_index((h, w))], dim=-1)  # + b_ij = P[bucket(D)]
        return attention @ self.v(pixels), attention.view(b, -1, h, w)  # h = softmax(e) (f W_v)
