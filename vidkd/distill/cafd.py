"""CAFD: cross-architecture face distillation (METHODS.md 5; paper 000), a Transformer face teacher (Swin, ViT) to a
CNN face student: URFM puts both on the same receptive fields, APT prompts the frozen teacher, and

    L = L_FR + lambda_1 * MSE(Attn_T, Attn_S) + lambda_2 * MSE(MSA(h_T), MSA(h_S)) + L_FR^T,

lambda_1 = DISTILL.CAFD_ATTN_WEIGHT, lambda_2 = DISTILL.CAFD_FEATURE_WEIGHT (both 1); L_FR the student's margin loss
(FACE.MARGIN, ArcFace by default, times DISTILL.CE_WEIGHT).

URFM, for one network's stage map `f` `[B, C, H, W]`: `L` learnable queries ("local centres", a sqrt(L) x sqrt(L)
grid of centres over the face) attend over the H x W pixel features,
    e_ij = (q_i W_q)(f_j W_k)^T / sqrt(d) + b_ij,   h = softmax_j(e) (f W_v),
with `b_ij = P[bucket(D(i, j))]`, `P` a learnable table over `buckets` distance buckets, and
    D(i, j) = |centre_i - pos_j| + gamma * D_face(i, j),
`D_face(i, j)`: the distance from pixel j to the landmark of the five-point face template (eyes, nose, mouth corners)
nearest centre i. Positions and distances are in units of the face's side (the aligned face is the unit square), a
bucket is `1 / buckets` of the square's diagonal wide, the last bucket takes every larger distance. Output: `h`
`[B, L, d]` and the attention `[B, L, H, W]`.

The method (`CAFD`):
- The student's and the (prompted) teacher's last stage maps each go through their own URFM (DISTILL.CAFD_QUERIES
  centres, CAFD_BUCKETS buckets, CAFD_GAMMA, common width CAFD_DIM): widths, grids and embedding sizes of the two
  may differ. The same centres on both sides are what "unified receptive fields" means here.
- Attn_T and Attn_S live on the two maps' grids: the finer one is area-averaged to the coarser grid (adaptive
  average pooling) and each query's map renormalised to sum 1, so both are distributions over the same cells.
- MSA: one multi-head self-attention over the L local features (DISTILL.CAFD_HEADS heads), shared by teacher and
  student, so the feature term compares each local feature in the context of the others through the same map.
- APT (DISTILL.CAFD_APT): DISTILL.CAFD_PROMPTS learnable prompts per teacher stage (`APT`). The teacher's weights
  stay frozen and get no gradient; the prompts learn through both distillation terms (the teacher adapts to its
  role) and through L_FR^T, the margin loss of the prompted teacher's embedding on the same identities with its
  own margin head (DISTILL.CAFD_TEACHER_FR_WEIGHT): the paper keeps the prompted teacher discriminative, a face
  model, while the prompts adapt (too many prompts erode that). The teacher's original margin head is not part
  of a face model, so this head is a fresh one, trained with the prompts.
- Ablations: CAFD_URFM False replaces each URFM by fixed regions (`FixedRegions`: the map averaged to the
  sqrt(L) x sqrt(L) grid of the centres, a Linear to CAFD_DIM) and drops the attention term (no learned attention
  to compare); CAFD_APT False runs the teacher as it is (no prompts, no L_FR^T: its last map is then cacheable);
  CAFD_GAMMA 0 removes the face-landmark term of D; CAFD_PROMPTS sets t.
Training-only modules (URFMs, MSA, prompts, margin heads) are not exported (`student_state_dict`).
"""
import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.swin_transformer import WindowAttention

from vidkd.distill.base import Distiller
from vidkd.distill.margins import HEADS
from vidkd.errors import ConfigError
from vidkd.models.taps import probe
from vidkd.tasks import input_size

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


class FixedRegions(nn.Module):
    """What replaces URFM when DISTILL.CAFD_URFM is off: each map averaged to the sqrt(L) x sqrt(L) grid of the local
    centres (fixed regions, each its cell of the face) and projected to `dim` by a Linear: `h` `[B, L, d]`, no
    learned attention (the attention term is then dropped)."""

    def __init__(self, channels, dim, queries=49):
        super().__init__()
        self.side, self.proj = math.isqrt(queries), nn.Linear(channels, dim)

    def forward(self, f):
        return self.proj(F.adaptive_avg_pool2d(f, self.side).flatten(2).transpose(1, 2)), None


def window_attention_with_prompts(attn, x, mask, prompts):
    """timm's `WindowAttention` on windows `x` `[nW * B, N, C]`, each window's queries attending over its own N keys
    and the stage's `t` prompts (`prompts` `[t, C]`, already through the block's norm1): the prompts' keys and values
    come from the k and v parts of `attn.qkv`; the relative-position bias and the shift `mask` `[nW, N, N]` cover the
    window's own columns only (the prompt columns get neither)."""
    b_, n, _ = x.shape
    heads, t = attn.num_heads, prompts.shape[0]
    q, k, v = attn.qkv(x).reshape(b_, n, 3, heads, -1).permute(2, 0, 3, 1, 4)  # [nW B, heads, N, hd] each
    _, pk, pv = attn.qkv(prompts).reshape(t, 3, heads, -1).permute(1, 2, 0, 3)  # [heads, t, hd] each
    k = torch.cat([k, pk.expand(b_, -1, -1, -1)], 2)  # keys: the window's, then the prompts'
    v = torch.cat([v, pv.expand(b_, -1, -1, -1)], 2)
    bias = attn._get_rel_pos_bias()  # [1, heads, N, N]
    if mask is not None:
        nw = mask.shape[0]
        bias = (bias.unsqueeze(1) + mask.view(1, nw, 1, n, n)).view(nw, heads, n, n).repeat(b_ // nw, 1, 1, 1)
    bias = F.pad(bias, (0, t))  # 0 on the prompt columns: no position, no shift mask
    logits = (q * attn.scale) @ k.transpose(-2, -1) + bias
    out = attn.attn_drop(logits.softmax(-1)) @ v  # softmax over the window's keys and the prompts'
    return attn.proj_drop(attn.proj(out.transpose(1, 2).reshape(b_, n, -1)))


class APT(nn.Module):
    """Adaptable prompting teacher: `prompts` learnable tokens per teacher stage, inserted into the frozen teacher by
    hooks and patched attention (the teacher's weights and module tree unchanged), active only inside `prompting()`.

    - Token (ViT) teacher, stage i = the blocks after stage i-1's last up to its tap block: a forward pre-hook on the
      stage's first block prepends its prompts `[B, t, C]` to the token sequence; a forward hook on its last block
      (run before the feature taps') drops them, so the stage gives the sequence of its input's length. The next
      stage prepends its own fresh prompts.
    - Swin teacher: every block's `WindowAttention` is given a forward that, while prompting, lets every window's
      queries attend over its own tokens plus the stage's prompts (`window_attention_with_prompts`, the prompts
      through the block's norm1); the prompts are never tokens of the map, so patch merging drops them and the next
      stage uses its own. Outside `prompting()` the patched forward is timm's own, bit for bit.
    """

    def __init__(self, teacher, prompts):
        super().__init__()
        self.active = False
        layouts, names = teacher.layouts(), teacher.stage_names
        stages = [teacher.get_submodule(n) for n in names]
        if all(layout == "tokens" and hasattr(s, "attn") for layout, s in zip(layouts, stages)):  # ViT blocks
            widths = [s.norm1.normalized_shape[0] for s in stages]
            self._hook_tokens(teacher, names)
        else:
            if not all(hasattr(s, "blocks") and all(isinstance(b.attn, WindowAttention) for b in s.blocks)
                       for s in stages):
                raise ConfigError(f"DISTILL.CAFD_APT: the teacher's stages are {layouts}, neither a timm Swin's "
                                  "nor ViT blocks: APT prompts transformer teachers (or set DISTILL.CAFD_APT False)")
            widths = [s.blocks[0].attn.qkv.in_features for s in stages]
            for i, stage in enumerate(stages):
                for block in stage.blocks:
                    self._patch(block, i)
        self.prompts = nn.ParameterList(nn.Parameter(torch.randn(prompts, c) * 0.02) for c in widths)

    def _hook_tokens(self, teacher, names):
        prefix, ends = names[0].rsplit(".", 1)[0], [int(n.rsplit(".", 1)[1]) for n in names]
        starts = [0] + [e + 1 for e in ends[:-1]]

        def prepend(i):
            def hook(module, args):
                if not self.active:
                    return None
                x = args[0]
                p = self.prompts[i].to(x.dtype).expand(x.shape[0], -1, -1)
                return (torch.cat([p, x], 1),) + args[1:]
            return hook

        def drop(i):
            def hook(module, args, output):
                return output[:, len(self.prompts[i]):] if self.active else None
            return hook

        for i, (s, e) in enumerate(zip(starts, ends)):
            teacher.get_submodule(f"{prefix}.{s}").register_forward_pre_hook(prepend(i))
            teacher.get_submodule(f"{prefix}.{e}").register_forward_hook(drop(i), prepend=True)  # before the taps'

    def _patch(self, block, i):
        attn = block.attn
        if "forward" in vars(attn):
            raise RuntimeError("APT: this Swin teacher's attention is already patched by another APT")
        timm_forward = attn.forward  # the bound method of timm's class

        def forward(x, mask=None):
            if not self.active:
                return timm_forward(x, mask)
            return window_attention_with_prompts(attn, x, mask, block.norm1(self.prompts[i].to(x.dtype)))

        attn.forward = forward

    @contextlib.contextmanager
    def prompting(self):
        self.active = True
        try:
            yield
        finally:
            self.active = False


def on_common_grid(a_t, a_s):
    """Two attention maps `[B, L, H, W]` on the coarser of their grids: area-averaged, each query's map summing to 1."""
    size = (min(a_t.shape[-2], a_s.shape[-2]), min(a_t.shape[-1], a_s.shape[-1]))

    def pool(a):
        a = F.adaptive_avg_pool2d(a.float(), size)
        return a / a.sum((-2, -1), keepdim=True)

    return pool(a_t), pool(a_s)


class CAFD(Distiller):
    tasks = ("face",)

    def __init__(self, student, teachers, heads, cfg):
        super().__init__(student, teachers, heads, cfg)
        c, size, teacher = self.cfg, input_size(cfg), self.teachers[0]
        if math.isqrt(c.CAFD_QUERIES) ** 2 != c.CAFD_QUERIES:
            raise ConfigError(f"DISTILL.CAFD_QUERIES: {c.CAFD_QUERIES} is not a square (a grid of local centres)")
        if c.CAFD_DIM % c.CAFD_HEADS:
            raise ConfigError(f"DISTILL.CAFD_DIM {c.CAFD_DIM} must be a multiple of DISTILL.CAFD_HEADS {c.CAFD_HEADS}")
        if c.CAFD_APT and c.CACHE != "live":
            raise ConfigError("DISTILL.CACHE: CAFD's prompted teacher trains (DISTILL.CAFD_APT), its outputs change "
                              "as the run goes: set DISTILL.CACHE live, or CAFD_APT False")
        s_probe, t_probe = probe(student, size), probe(teacher, size)

        def mapper(channels):
            if c.CAFD_URFM:
                return URFM(channels, c.CAFD_DIM, c.CAFD_QUERIES, c.CAFD_BUCKETS, c.CAFD_GAMMA)
            return FixedRegions(channels, c.CAFD_DIM, c.CAFD_QUERIES)

        self.urfm_s, self.urfm_t = mapper(s_probe["stages"][-1]["channels"]), mapper(t_probe["stages"][-1]["channels"])
        self.msa = nn.MultiheadAttention(c.CAFD_DIM, c.CAFD_HEADS, batch_first=True)
        self.apt = APT(teacher, c.CAFD_PROMPTS) if c.CAFD_APT else None
        if self.apt is not None:  # L_FR^T's head over the same identities, on the teacher's embedding
            self.teacher_margin = HEADS[cfg.FACE.MARGIN](t_probe["embed_dim"], sum(self.heads.values()))

    def teacher_targets(self, x):
        if self.apt is not None:
            raise ConfigError("DISTILL.CACHE: CAFD's prompted teacher trains (DISTILL.CAFD_APT): nothing to cache")
        return {"features": self.run_teacher(0, x)[1][-1]}  # the unprompted teacher's last stage map

    def mixed(self, h):
        return self.msa(h, h, h, need_weights=False)[0]  # MSA(h)

    def forward(self, batch):
        x, y, c = batch["input"], batch["targets"], self.cfg
        z_s, f_s, _ = self.student_taps(x)
        if self.apt is not None:
            with self.apt.prompting():
                z_t, f_t, _ = self.run_teacher(0, x, learn=True)  # the prompted teacher; prompts get the gradients
            f_t = f_t[-1]
        else:
            f_t = self.targets(batch)["features"]
        dtype = self.msa.in_proj_weight.dtype
        h_s, a_s = self.urfm_s(f_s[-1].to(dtype))
        h_t, a_t = self.urfm_t(f_t.to(dtype))
        losses = {"ce": c.CE_WEIGHT * self.ce(z_s, y)}  # L_FR
        if a_s is not None:  # lambda_1 * MSE(Attn_T, Attn_S)
            losses["attention"] = c.CAFD_ATTN_WEIGHT * F.mse_loss(*on_common_grid(a_t, a_s))
        # lambda_2 * MSE(MSA(h_T), MSA(h_S))
        losses["feature"] = c.CAFD_FEATURE_WEIGHT * F.mse_loss(self.mixed(h_t).float(), self.mixed(h_s).float())
        if self.apt is not None:  # L_FR^T: the prompted teacher stays a face model
            losses["teacher_fr"] = c.CAFD_TEACHER_FR_WEIGHT * self.teacher_margin(z_t, next(iter(y.values())))[0]
        return z_s, losses
