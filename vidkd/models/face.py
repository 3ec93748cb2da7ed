"""Face recognition models: aligned faces `[B, 3, S, S]` (S = 112) -> an embedding `[B, D]` (D = 512), compared
by cosine; the margin head that trains it belongs to the method (`vidkd.distill.margins`).

- IResNet-18 / 50 / 100 (Deng et al., ArcFace's backbones): a 3x3 stem at full resolution (BN, PReLU), four
  stages of pre-activation residual blocks (BN -> 3x3 conv -> BN -> PReLU -> 3x3 conv of the block's stride -> BN,
  plus the input, through a strided 1x1 conv + BN where the shape changes), each stage starting at stride 2; then
  BN -> flatten the S/16 x S/16 map -> Linear to D -> BN (its scale fixed at 1).
- MobileFaceNet (Chen et al., 2018): 3x3 conv of stride 2, a depthwise 3x3, inverted residual bottlenecks
  (expansion t, width c, n blocks, first stride s: (2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2),
  (2, 128, 2, 1)), a 1x1 conv to 512, a global depthwise conv (a kernel the size of the map, no activation), a
  1x1 conv to D with BN. Here D = 512 (the paper's is 128).
- Transformer teachers (CAFD's): a timm Swin or ViT body whose classifier is a Linear to D (the embedding head),
  then BN: Swin-T (`swin_face_t`, patch 4, window 7) and ViT-S with 8-pixel patches (`vit_face_s`, 14 x 14 tokens
  at 112), stages as for the image models (`vidkd.models.image`).
- `*_tiny`: the same designs, narrow and shallow, for 2 CPU cores (D = 64).
Stages: the CNNs' four resolutions below the stem (S/2 .. S/16), as channels-first maps; the transformers' as
their image counterparts. Every model ends in `out` (an identity), the "classifier" of the model contract: the taps'
pooled embedding (its input) is the face embedding itself.
"""
import torch.nn as nn

from vidkd.models.base import VideoModel, register
from vidkd.models.image import MINI_VIT, hierarchical, isotropic


def conv_bn(c_in, c_out, kernel, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.PReLU(c_out)) if act else nn.Sequential(*layers)


class IBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(c_out), nn.PReLU(c_out),
                                  nn.Conv2d(c_out, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = conv_bn(c_in, c_out, 1, stride, act=False) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


class FaceModel(VideoModel):
    """A face model: its output is the embedding, passed through `out` (an identity: the taps read its input)."""

    stage_layout = "NCHW"
    stage_names = ("stage1", "stage2", "stage3", "stage4")
    head_name = "out"


class IResNet(FaceModel):
    def __init__(self, layers, widths=(64, 128, 256, 512), dim=512, crop_size=112):
        super().__init__()
        self.stem = conv_bn(3, widths[0], 3)
        c_in, stages = widths[0], []
        for c, n in zip(widths, layers):
            stages.append(nn.Sequential(*(IBlock(c_in if i == 0 else c, c, 2 if i == 0 else 1) for i in range(n))))
            c_in = c
        self.stage1, self.stage2, self.stage3, self.stage4 = stages
        side = crop_size // 16
        self.pool = nn.Sequential(nn.BatchNorm2d(c_in), nn.Flatten())
        self.embedding = nn.Sequential(nn.Linear(c_in * side * side, dim), nn.BatchNorm1d(dim))
        nn.init.ones_(self.embedding[1].weight)
        self.embedding[1].weight.requires_grad_(False)  # the embedding's BN scale stays 1
        self.out = nn.Identity()

    def forward(self, x):
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.stem(x)))))
        return self.out(self.embedding(self.pool(x)))


class Bottleneck(nn.Module):
    """1x1 expansion (BN, PReLU) -> depthwise 3x3 of the stride (BN, PReLU) -> linear 1x1 (BN); a residual where the
    shape stays."""

    def __init__(self, c_in, c_out, stride, t):
        super().__init__()
        hidden = c_in * t
        self.body = nn.Sequential(conv_bn(c_in, hidden, 1), conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                  conv_bn(hidden, c_out, 1, act=False))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def bottlenecks(c_in, setting):
    """`(t, c, n, s)` -> n blocks, the first of stride s."""
    t, c, n, s = setting
    return nn.Sequential(*(Bottleneck(c_in if i == 0 else c, c, s if i == 0 else 1, t) for i in range(n)))


MOBILEFACENET = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class MobileFaceNet(FaceModel):
    def __init__(self, setting=MOBILEFACENET, width=64, last=512, dim=512, crop_size=112):
        super().__init__()
        self.stem = conv_bn(3, width, 3, 2)
        self.stage1 = conv_bn(width, width, 3, groups=width)  # S/2
        blocks, c_in = [], width
        for row in setting:
            blocks.append(bottlenecks(c_in, row))
            c_in = row[1]
        # stages: S/4 (the first group), S/8 (the next two), S/16 (the rest)
        self.stage2, self.stage3, self.stage4 = blocks[0], nn.Sequential(*blocks[1:3]), nn.Sequential(*blocks[3:])
        side = crop_size // 16
        self.pool = nn.Sequential(conv_bn(c_in, last, 1), conv_bn(last, last, side, groups=last, act=False),
                                  nn.Flatten())  # global depthwise conv: one kernel the size of the map
        self.pool[1][0].padding = (0, 0)
        self.embedding = nn.Sequential(nn.Linear(last, dim, bias=False), nn.BatchNorm1d(dim))
        self.out = nn.Identity()

    def forward(self, x):
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.stem(x)))))
        return self.out(self.embedding(self.pool(x)))


class TimmFace(FaceModel):
    """A timm transformer (`vidkd.models.image`'s builder `build`) whose classifier gives the D-d embedding, then BN."""

    def __init__(self, build, dim, crop_size):
        super().__init__()
        self.body = build(dim, crop_size)
        self.stage_names = tuple(f"body.{n}" for n in self.body.stage_names)
        self.stage_layout, self.token_grid = self.body.stage_layout, self.body.token_grid
        self.embedding = nn.BatchNorm1d(dim)
        self.out = nn.Identity()

    def forward(self, x):
        return self.out(self.embedding(self.body(x)))


FAMILIES = {  # builders fn(crop_size)
    "iresnet18": lambda crop_size: IResNet((2, 2, 2, 2), crop_size=crop_size),
    "iresnet50": lambda crop_size: IResNet((3, 4, 14, 3), crop_size=crop_size),
    "iresnet100": lambda crop_size: IResNet((3, 13, 30, 3), crop_size=crop_size),
    "mobilefacenet": lambda crop_size: MobileFaceNet(crop_size=crop_size),
    "swin_face_t": lambda crop_size: TimmFace(hierarchical("swin_tiny_patch4_window7_224", "NHWC"), 512, crop_size),
    "vit_face_s": lambda crop_size: TimmFace(isotropic("vit_small_patch16_224", patch_size=8), 512, crop_size),
    # 2-CPU-core sizes
    "iresnet_tiny": lambda crop_size: IResNet((1, 1, 1, 1), (8, 16, 32, 64), 64, crop_size),
    "mobilefacenet_tiny": lambda crop_size: MobileFaceNet(((2, 16, 1, 2), (2, 32, 1, 2), (2, 32, 1, 1),
                                                           (2, 32, 1, 2), (2, 32, 1, 1)), 16, 64, 64, crop_size),
    "swin_face_tiny": lambda crop_size: TimmFace(hierarchical("swin_tiny_patch4_window7_224", "NHWC", embed_dim=16,
                                                              depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)),
                                                 64, crop_size),
    "vit_face_tiny": lambda crop_size: TimmFace(isotropic("deit_tiny_patch16_224", **{**MINI_VIT, "patch_size": 8}),
                                                64, crop_size),
}
for _name, _build in FAMILIES.items():
    register(_name, "face")(_build)
