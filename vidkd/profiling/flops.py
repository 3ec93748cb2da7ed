"""FLOPs and parameters of a model, counted by fvcore.

fvcore counts one fused multiply-add as one flop, the convention of the published GFLOPs figures
(torchvision's `_ops`, the X3D and VideoMAE papers).

X3D-XS: the paper's 0.60 GFLOPs at 4x160x160 matches its convolutions alone (fvcore: 0.604 conv, 0.626 with
batch norm and head). pytorchvideo's model-zoo 0.91 is the fvcore count at the 182x182 test crop, 4x182x182,
with the model in training mode, where fvcore charges batch norm 2.5x its eval cost (0.909; 0.867 in eval
mode); the zoo's X3D-S 2.96 (13x182x182) and X3D-M 6.72 (16x256x256) match the same way (2.952, 6.715).

fvcore has no formula for `scaled_dot_product_attention` (the ViT's fused attention): `sdpa_flop` counts its two
matrix products, as fvcore counts them when the attention is written out (`q k^T` and `softmax(.) v`).
"""
import math
import warnings

import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # fvcore.nn's import-time torch.jit.script deprecation
    from fvcore.nn import FlopCountAnalysis


def sdpa_flop(inputs, outputs):
    """Multiply-adds of `softmax(q k^T / sqrt(d)) v` for q `[..., N, d]`, k `[..., S, d]`, v `[..., S, d_v]`:
    `prod(...) * N * S * (d + d_v)`."""
    q, k, v = (i.type().sizes() for i in inputs[:3])
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])  # N S d for q k^T, N S d_v for attn v


def count_flops(model, input_shape):
    """Count one forward of `model` (moved to the CPU, eval mode) on a clip of `input_shape`.

    Returns dict(gflops, params_m = all parameters in millions, unsupported = {op: calls}): the ops fvcore
    has no formula for, which are left out of gflops (fvcore's own warnings about them are silenced).
    """
    model = model.cpu().eval()
    analysis = FlopCountAnalysis(model, torch.zeros(input_shape))
    analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit tracer warnings
        total = analysis.total()
    return dict(gflops=total / 1e9, params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                unsupported=dict(analysis.unsupported_ops()))
