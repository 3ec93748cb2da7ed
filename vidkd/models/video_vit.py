"""A VideoMAE-compatible video ViT (Tong et al., "VideoMAE", NeurIPS 2022): the heavy teacher.

Design of the VideoMAE *fine-tuned* classifier, written from the paper and the official naming so that an
official fine-tuned state dict loads with `strict=True`:

- cube embedding: a `tubelet x patch x patch` Conv3d turns `[B, 3, T, H, W]` into `N = T/t * H/p * W/p`
  tokens of width D (order: time, height, width);
- a fixed 1D sin-cos position table over the N tokens (non-persistent buffer, as the official fine-tuned
  models keep it out of the state dict), or a learned `pos_embed` parameter (`learned_pos=True`);
- pre-norm blocks with joint space-time attention over all tokens, no class token; the qkv projection has
  no bias of its own, its bias is `cat(q_bias, 0, v_bias)` (BEiT-style, no key bias);
- mean pooling over tokens, `fc_norm`, dropout, linear `head`.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_

from vidkd.models.base import VideoModel, register

SIZES = {  # name -> (width D, depth, heads); mlp_ratio 4 throughout
    "ti": (192, 12, 3),
    "s": (384, 12, 6),
    "b": (768, 12, 12),
    "l": (1024, 24, 16),
}


def get_sinusoid_encoding_table(n_position, d_hid):
    """The Transformer sinusoid table `[n_position, d_hid]`, as VideoMAE uses it:
    table[pos, j] = sin(pos / 10000^(2*(j//2)/d_hid)) for even j, cos(...) for odd j."""
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]
    j = torch.arange(d_hid, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / d_hid)
    table = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


class PatchEmbed(nn.Module):
    """Cube embedding: `[B, 3, T, H, W]` -> `[B, N, D]`, one token per `tubelet x patch x patch` cube.

    `stem="patch"` (VideoMAE): one `tubelet x patch x patch` conv with that stride. `stem="conv"`: first two
    3x3x3 convs (BN, ReLU) of stride (1, 2, 2), widths D/8 and D/4, then the cube conv on the 4x smaller frame
    (`tubelet x patch/4 x patch/4`): the same tokens, with local space-time filters before the attention
    (Xiao et al., "Early convolutions help transformers see better", NeurIPS 2021). Small ViTs trained from
    scratch on little data learn motion with it; official VideoMAE checkpoints need `patch`.
    """

    def __init__(self, dim, patch_size=16, tubelet_size=2, stem="patch"):
        super().__init__()
        if stem not in ("patch", "conv"):
            raise ValueError(f"ViT stem must be 'patch' or 'conv', got {stem!r}")
        layers, c_in, cube = [], 3, patch_size
        if stem == "conv":
            if patch_size % 4:
                raise ValueError(f"the conv stem needs a patch size divisible by 4, got {patch_size}")
            for c_out in (dim // 8, dim // 4):
                layers += [nn.Conv3d(c_in, c_out, 3, stride=(1, 2, 2), padding=1, bias=False), nn.BatchNorm3d(c_out),
                           nn.ReLU(inplace=True)]
                c_in = c_out
            cube = patch_size // 4
        self.stem = nn.Sequential(*layers)
        k = (tubelet_size, cube, cube)
        self.proj = nn.Conv3d(c_in, dim, kernel_size=k, stride=k)

    def forward(self, x):
        return self.proj(self.stem(x)).flatten(2).transpose(1, 2)  # [B, D, T', H', W'] -> [B, T'H'W', D]


class Attention(nn.Module):
    """Multi-head self-attention over all N tokens: `[B, N, D]` -> `[B, N, D]`.

    By default through `F.scaled_dot_product_attention`, which never holds the `[B, heads, N, N]` matrix (a
    fused, memory-efficient kernel: at 16 x 224, N = 1568). With `keep_map = True` the matrix is computed
    explicitly and kept as `self.map` until the next forward, for a method that taps attention maps (none of
    today's video methods does; tools/benchmark_attention.py measures this path as the "before"); the output is
    the same.
    """

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)
        self.keep_map, self.map = False, None

    def forward(self, x):
        B, N, D = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias, requires_grad=False), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(B, N, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, N, D/heads]
        if self.keep_map:
            self.map = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)  # softmax(q k^T / sqrt(d)), [B, h, N, N]
            x = self.map @ v
        else:
            self.map = None
            x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # softmax(q k^T / sqrt(d)) v
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), each with stochastic depth."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VideoViT(VideoModel):
    """VideoMAE ViT classifier for clips `[B, 3, num_frames, crop_size, crop_size]` -> logits `[B, K]`.

    Attributes: `grid` = `token_grid` = (T', H', W') tokens per axis, `num_patches` = T'H'W'.
    """

    head_name = "head"
    embed_name = "head_drop"
    stage_layout = "tokens"

    def __init__(self, num_classes, num_frames=16, crop_size=224, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, patch_size=16, tubelet_size=2, drop_path=0.1, head_drop=0.0,
                 learned_pos=False, init_scale=0.001, stem="patch"):
        super().__init__()
        if num_frames % tubelet_size or crop_size % patch_size:
            raise ValueError(f"clip {num_frames}x{crop_size}x{crop_size} is not divisible into "
                             f"{tubelet_size}x{patch_size}x{patch_size} tubelets")
        self.input_shape = (3, num_frames, crop_size, crop_size)
        self.grid = self.token_grid = (num_frames // tubelet_size, crop_size // patch_size, crop_size // patch_size)
        self.num_patches = math.prod(self.grid)

        self.patch_embed = PatchEmbed(embed_dim, patch_size, tubelet_size, stem)
        table = get_sinusoid_encoding_table(self.num_patches, embed_dim)[None]  # [1, N, D]
        if learned_pos:
            self.pos_embed = nn.Parameter(table)
        else:
            self.register_buffer("pos_embed", table, persistent=False)
        dpr = torch.linspace(0, drop_path, depth).tolist()  # stochastic depth rises linearly with depth
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, p) for p in dpr)
        self.norm = nn.Identity()  # mean pooling: the norm moves to fc_norm, after the pooling
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(head_drop)
        self.head = nn.Linear(embed_dim, num_classes)
        # 4 blocks evenly spaced through the depth, ending at the last (fewer if depth < 4)
        self.stage_names = tuple(f"blocks.{i}" for i in sorted({max(0, (k + 1) * depth // 4 - 1) for k in range(4)}))

        self.apply(self._init_weights)
        with torch.no_grad():  # VideoMAE fine-tuning: a small head so the start is near-uniform
            self.head.weight.mul_(init_scale)
            self.head.bias.mul_(init_scale)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"VideoViT was built for input [B, {', '.join(map(str, self.input_shape))}], "
                             f"got {list(x.shape)}")
        x = self.patch_embed(x) + self.pos_embed.to(x.dtype)  # [B, N, D]
        for blk in self.blocks:
            x = blk(x)
        x = self.fc_norm(self.norm(x).mean(1))  # [B, D]
        return self.head(self.head_drop(x))  # [B, K]


def _builder(size):
    dim, depth, heads = SIZES[size]

    def build(num_classes, num_frames=16, crop_size=224, **kw):
        kw.setdefault("depth", depth)
        return VideoViT(num_classes, num_frames, crop_size, embed_dim=dim, num_heads=heads, **kw)

    build.__name__ = f"videomae_vit_{size}"
    build.__doc__ = f"VideoMAE ViT-{size.upper()} (D={dim}, depth {depth}, {heads} heads); kw: depth, drop_path, " \
                    "head_drop, patch_size, tubelet_size, learned_pos, stem."
    return register(build.__name__)(build)


videomae_vit_ti, videomae_vit_s, videomae_vit_b, videomae_vit_l = (_builder(s) for s in SIZES)
