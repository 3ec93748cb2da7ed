"""3D CNNs from pytorchvideo (X3D-XS/S/M/L, Slow-R50, SlowFast-R50, R(2+1)D-R50) and torchvision (R3D-18,
MC3-18, R(2+1)D-18, S3D), built by their libraries' own builders and wrapped, unchanged, as VideoModels.

Every one returns logits: the pytorchvideo heads are built without their default softmax. Pooling before
the classifier is global average pooling at any input size: pytorchvideo's builders are given adaptive
pooling where they take a pool argument, X3D's pool kernel is computed by its builder from the clip size,
and S3D's fixed (2, 7, 7) average pool, global at its 16x224 design size, is made adaptive. X3D's Swish is
torch's SiLU, the same x * sigmoid(x) with the same (parameter-free) state dict: pytorchvideo's own Swish is a
Python autograd Function, which a TorchScript file cannot hold (tools/export_student.py).
"""
import torch.nn as nn
from pytorchvideo.models.r2plus1d import create_r2plus1d
from pytorchvideo.models.resnet import create_resnet
from pytorchvideo.models.slowfast import create_slowfast
from pytorchvideo.models.x3d import create_x3d
from torchvision.models import video as tv

from vidkd.models.base import Wrapped, register

PV_STAGES = ("blocks.1", "blocks.2", "blocks.3", "blocks.4")  # pytorchvideo Net: blocks.0 stem, 1-4 stages
TV_STAGES = ("layer1", "layer2", "layer3", "layer4")
S3D_STAGES = ("features.2", "features.6", "features.12", "features.15")  # the blocks before each max pool


def pv_dropout(block, rate):
    """The dropout of pytorchvideo's head in `blocks.<block>`, whose input is the embedding; none at rate 0."""
    return f"blocks.{block}.dropout" if rate > 0 else ""


def _x3d(num_classes, num_frames, crop_size, depth_factor, dropout=0.5):
    """X3D (Feichtenhofer, CVPR 2020): XS, S and M share one network and differ in clip size; L is deeper."""
    net = create_x3d(input_clip_length=num_frames, input_crop_size=crop_size, model_num_class=num_classes,
                     depth_factor=depth_factor, dropout_rate=dropout, head_activation=None, inner_act=nn.SiLU)
    return Wrapped(net, PV_STAGES, "blocks.5.proj", embed_name=pv_dropout(5, dropout))


@register("x3d_xs")
def x3d_xs(num_classes, num_frames=4, crop_size=160, **kw):
    return _x3d(num_classes, num_frames, crop_size, 2.2, **kw)


@register("x3d_s")
def x3d_s(num_classes, num_frames=13, crop_size=160, **kw):
    return _x3d(num_classes, num_frames, crop_size, 2.2, **kw)


@register("x3d_m")
def x3d_m(num_classes, num_frames=16, crop_size=224, **kw):
    return _x3d(num_classes, num_frames, crop_size, 2.2, **kw)


@register("x3d_l")
def x3d_l(num_classes, num_frames=16, crop_size=312, **kw):
    return _x3d(num_classes, num_frames, crop_size, 5.0, **kw)


@register("slow_r50")
def slow_r50(num_classes, num_frames=8, crop_size=224, dropout=0.5):
    net = create_resnet(model_depth=50, model_num_class=num_classes, stem_conv_kernel_size=(1, 7, 7),
                        head_pool=nn.AdaptiveAvgPool3d, head_output_size=(1, 1, 1), dropout_rate=dropout,
                        head_activation=None)
    return Wrapped(net, PV_STAGES, "blocks.5.proj", embed_name=pv_dropout(5, dropout))


class SlowFastInput(nn.Module):
    """[B, 3, T, H, W] -> [slow, fast]: the slow pathway sees every `alpha`-th frame (alpha = 4)."""

    def __init__(self, alpha):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return [x[:, :, :: self.alpha], x]


@register("slowfast_r50")
def slowfast_r50(num_classes, num_frames=32, crop_size=224, dropout=0.5, alpha=4):
    """SlowFast-R50 4x16 (Feichtenhofer et al., ICCV 2019). Stage features: the slow pathway (fused)."""
    if num_frames % alpha:
        raise ValueError(f"slowfast_r50: num_frames ({num_frames}) must be a multiple of alpha ({alpha})")
    net = create_slowfast(model_depth=50, model_num_class=num_classes, dropout_rate=dropout,
                          slowfast_fusion_conv_stride=(alpha, 1, 1), head_pool=nn.AdaptiveAvgPool3d,
                          head_activation=None)
    return Wrapped(net, PV_STAGES, "blocks.6.proj", SlowFastInput(alpha), pv_dropout(6, dropout))


@register("r2plus1d_r50")
def r2plus1d_r50(num_classes, num_frames=16, crop_size=224, dropout=0.5):
    net = create_r2plus1d(model_num_class=num_classes, dropout_rate=dropout, head_pool=nn.AdaptiveAvgPool3d,
                          head_output_size=(1, 1, 1), head_activation=None)
    return Wrapped(net, PV_STAGES, "blocks.5.proj", embed_name=pv_dropout(5, dropout))


def _torchvision(builder):
    def build(num_classes, num_frames=16, crop_size=112):
        return Wrapped(builder(num_classes=num_classes), TV_STAGES, "fc")

    return build


register("r3d_18")(_torchvision(tv.r3d_18))
register("mc3_18")(_torchvision(tv.mc3_18))
register("r2plus1d_18")(_torchvision(tv.r2plus1d_18))


@register("s3d")
def s3d(num_classes, num_frames=16, crop_size=224):
    net = tv.s3d(num_classes=num_classes)
    net.avgpool = nn.AdaptiveAvgPool3d(1)
    return Wrapped(net, S3D_STAGES, "classifier.1", embed_name="classifier.0")
