"""Plain small 3D CNNs for CPU runs: four stages of (3x3x3 conv -> BN -> ReLU -> 1x2x2 max pool), widths
w, 2w, 4w, 8w, then global average pooling and a linear classifier.

X3D's depthwise convolutions and the ViT need far more steps than a CPU demo can afford to learn the
synthetic motion classes from scratch; these plain 3D convolutions learn them in a minute. `c3d_tiny`
(w = 16, 0.29 M parameters, a lightweight student) and `c3d_small` (w = 32, 1.2 M parameters, a homogeneous
teacher; 0.36 GMACs per 8x32x32 clip against the student's 0.09).
"""
import torch.nn as nn

from vidkd.models.base import VideoModel, register


def _stage(c_in, c_out, convs):
    layers = []
    for i in range(convs):
        layers += [nn.Conv3d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.MaxPool3d((1, 2, 2)))


class Plain3D(VideoModel):
    stage_names = ("stages.0", "stages.1", "stages.2", "stages.3")
    head_name = "head"
    embed_name = "pool.2"  # the dropout

    def __init__(self, num_classes, width, convs_per_stage, dropout=0.2):
        super().__init__()
        widths = [3] + [width * 2**i for i in range(4)]
        self.stages = nn.Sequential(*(_stage(a, b, convs_per_stage) for a, b in zip(widths, widths[1:])))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Dropout(dropout))
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        return self.head(self.pool(self.stages(x)))


@register("c3d_tiny")
def c3d_tiny(num_classes, num_frames=8, crop_size=32):
    return Plain3D(num_classes, 16, 1)


@register("c3d_small")
def c3d_small(num_classes, num_frames=8, crop_size=32):
    return Plain3D(num_classes, 32, 1)
