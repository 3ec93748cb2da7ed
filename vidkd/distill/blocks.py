"""Layers several methods build from, for a clip's maps (3 grid dimensions: T, H, W) or an image's (2: H, W)."""
import torch.nn as nn

# per grid dimensions: convolution, batch norm, pooling, stride 2 in space only
LAYERS = {3: (nn.Conv3d, nn.BatchNorm3d, nn.AdaptiveAvgPool3d, (1, 2, 2)),
          2: (nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d, 2)}


class SqueezeExcite(nn.Module):
    """`x * sigmoid(W_2 relu(W_1 GAP(x)))`: a gate per channel; the hidden width is a quarter of the channels, at
    least `least`."""

    def __init__(self, channels, dims, least):
        super().__init__()
        conv, _, pool, _ = LAYERS[dims]
        hidden = max(channels // 4, least)
        self.gate = nn.Sequential(pool(1), conv(channels, hidden, 1), nn.ReLU(inplace=True), conv(hidden, channels, 1),
                                  nn.Sigmoid())

    def forward(self, x):
        return x * self.gate(x)


def heads_for(width):
    """Attention heads of width about 32 that divide `width`."""
    heads = max(1, width // 32)
    while width % heads:
        heads -= 1
    return heads
