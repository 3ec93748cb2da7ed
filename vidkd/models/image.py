"""Image models (TASK image) by name, built by timm with random weights (a local checkpoint in timm's layout
loads through `vidkd.models.checkpoint`), each with its stages, their layout and its embedding declared.

The papers' families: ResNet-18/50, MobileNetV2, DeiT-Ti/S, ViT-S, Swin-T/N, ConvNeXt-T, ResMLP-S12; and
`*_mini` versions of each family sized for 2 CPU cores and 32-pixel images. Stages: timm's own `feature_info`
stages for the hierarchical models (the last 4), 4 blocks evenly spaced through the depth for the isotropic
ones (ViT, DeiT, ResMLP), as for the video ViT. Swin-N is not defined by the papers; here it is Swin-T's
layout at width 64 (vidkd's choice).
"""
import functools

import timm
from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock

from vidkd.models.base import VideoModel, register


class TimmImage(VideoModel):
    """A timm classifier, unchanged, as `self.net`, taking `[B, 3, H, W]`."""

    def __init__(self, net, stages, layout, head_name, embed_name="", token_grid=None):
        super().__init__()
        self.net, self.stage_layout, self.token_grid = net, layout, token_grid
        self.stage_names = tuple(f"net.{n}" for n in stages)
        self.head_name = f"net.{head_name}"
        self.embed_name = embed_name and f"net.{embed_name}"

    def forward(self, x):
        return self.net(x)


def spaced_blocks(depth):
    """4 blocks evenly spaced through `depth`, ending at the last (fewer if depth < 4)."""
    return [f"blocks.{i}" for i in sorted({max(0, (k + 1) * depth // 4 - 1) for k in range(4)})]


def hierarchical(timm_name, layout="NCHW", **kw):
    """A CNN or Swin: timm's last 4 feature stages; the classifier named by timm; its dropout when in a head."""
    def build(num_classes, crop_size):
        size = {"img_size": crop_size} if timm_name.startswith("swin") else {}
        net = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **size, **kw)
        head = net.pretrained_cfg["classifier"]
        embed = "head.drop" if head == "head.fc" else ""  # timm's ClassifierHead: pool, dropout, fc
        return TimmImage(net, [f["module"] for f in net.feature_info][-4:], layout, head, embed)

    return build


def isotropic(timm_name, create=None, **kw):
    """A ViT, DeiT or ResMLP: tokens (a class token, if any, dropped) on the patch grid; the embedding before
    `head_drop`. `create`: the model's class, for a size timm has no name for."""
    def build(num_classes, crop_size):
        make = create or functools.partial(timm.create_model, timm_name, pretrained=False)
        net = make(num_classes=num_classes, img_size=crop_size, **kw)
        embed = net.stem if hasattr(net, "stem") else net.patch_embed
        return TimmImage(net, spaced_blocks(len(net.blocks)), "tokens", "head", "head_drop", tuple(embed.grid_size))

    return build


MINI_RESNET = {"layers": (1, 1, 1, 1), "channels": (16, 32, 64, 128), "stem_width": 16}
MICRO_RESNET = {"layers": (1, 1, 1, 1), "channels": (8, 16, 32, 64), "stem_width": 8}
MINI_VIT = {"patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 2}
FAMILIES = {
    "resnet18": hierarchical("resnet18"),
    "resnet50": hierarchical("resnet50"),
    "mobilenetv2": hierarchical("mobilenetv2_100"),
    "deit_tiny": isotropic("deit_tiny_patch16_224"),
    "deit_small": isotropic("deit_small_patch16_224"),
    "vit_small": isotropic("vit_small_patch16_224"),
    "swin_tiny": hierarchical("swin_tiny_patch4_window7_224", "NHWC"),
    "swin_nano": hierarchical("swin_tiny_patch4_window7_224", "NHWC", embed_dim=64, num_heads=(2, 4, 8, 16)),
    "convnext_tiny": hierarchical("convnext_tiny"),
    "resmlp_s12": isotropic("resmlp_12_224"),
    # 2-CPU-core sizes for 32-pixel images
    "resnet_mini": hierarchical("resnet18", **MINI_RESNET),
    "resnet_micro": hierarchical("resnet18", **MICRO_RESNET),  # the image demo's student
    "mobilenetv2_mini": hierarchical("mobilenetv2_050"),
    "deit_mini": isotropic("deit_tiny_patch16_224", **MINI_VIT),
    "swin_mini": hierarchical("swin_tiny_patch4_window7_224", "NHWC", patch_size=2, embed_dim=16, depths=(1, 1, 1, 1),
                              num_heads=(1, 2, 4, 8), window_size=4),
    "convnext_mini": hierarchical("convnext_tiny", depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), patch_size=2),
    # ResMLP's blocks (timm's resmlp_12_224 at another size, which timm's name fixes)
    "resmlp_mini": isotropic("", MlpMixer, patch_size=4, embed_dim=64, num_blocks=4, mlp_ratio=4,
                             block_layer=ResBlock, norm_layer=Affine),
}
for _name, _build in FAMILIES.items():
    register(_name, "image")(_build)
