"""2D-backbone students with temporal shift (TSM, Lin et al., ICCV 2019) on timm MobileNetV2 / ResNet-18.

The clip's T frames go through the 2D backbone as a batch of B*T images; before the first convolution of
every residual block, 1/8 of the channels are shifted one frame back in time and 1/8 one frame forward
(zero-padded at the ends), so the block mixes neighbouring frames at no extra FLOPs. The frame logits are
averaged over time (TSN consensus). The 3D students (X3D-XS / X3D-S) are in cnn3d.py.
"""
import timm
import torch
import torch.nn as nn

from vidkd.models.base import VideoModel, register


class TemporalShift(nn.Module):
    """Shift part of the channels of [B*T, C, H, W] along T, then apply `net`."""

    def __init__(self, net, num_frames, fold_div=8):
        super().__init__()
        self.net, self.num_frames, self.fold_div = net, num_frames, fold_div

    def forward(self, x):
        nt, c, h, w = x.shape
        x = x.view(nt // self.num_frames, self.num_frames, c, h, w)
        fold = c // self.fold_div
        out = torch.zeros_like(x)
        out[:, :-1, :fold] = x[:, 1:, :fold]  # channels [0, fold): frame t sees frame t + 1
        out[:, 1:, fold : 2 * fold] = x[:, :-1, fold : 2 * fold]  # [fold, 2 fold): frame t sees frame t - 1
        out[:, :, 2 * fold :] = x[:, :, 2 * fold :]  # the rest unshifted
        return self.net(out.view(nt, c, h, w))


class TSM(VideoModel):
    def __init__(self, backbone, num_classes, num_frames, shift_blocks, first_conv):
        super().__init__()
        self.num_frames = num_frames
        self.net = timm.create_model(backbone, pretrained=False, num_classes=num_classes)
        for block in shift_blocks(self.net):
            setattr(block, first_conv, TemporalShift(getattr(block, first_conv), num_frames))
        stages = [f["module"] for f in self.net.feature_info][-4:]  # timm's own list of stage modules
        self.stage_names = tuple(f"net.{name}" for name in stages)
        self.head_name = f"net.{self.net.pretrained_cfg['classifier']}"
        self.stage_layout = "BT_CHW"  # the backbone runs on the clip's frames

    def forward(self, x):
        b, c, t, h, w = x.shape
        if t != self.num_frames:
            raise ValueError(f"{type(self).__name__} was built for {self.num_frames} frames, got {t}")
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        return self.net(frames).view(b, t, -1).mean(1)  # average of the frame logits


def _resnet_blocks(net):
    return [block for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for block in layer]


def _inverted_residuals(net):
    """The MobileNetV2 blocks with a residual connection (TSM shifts only inside residual branches)."""
    return [block for stage in net.blocks for block in stage if getattr(block, "has_skip", False)]


@register("tsm_resnet18")
def tsm_resnet18(num_classes, num_frames=8, crop_size=224):
    return TSM("resnet18", num_classes, num_frames, _resnet_blocks, "conv1")


@register("tsm_mobilenetv2")
def tsm_mobilenetv2(num_classes, num_frames=8, crop_size=224):
    return TSM("mobilenetv2_100", num_classes, num_frames, _inverted_residuals, "conv_pw")
