"""FLOPs and parameters of a model, counted by fvcore.

fvcore counts one fused multiply-add as one flop, the convention of the published GFLOPs figures
(torchvision's `_ops`, the X3D and VideoMAE papers). Note on X3D: the paper's figures (X3D-XS 0.60 GFLOPs at
4x160x160) are the convolutions at the training crop; pytorchvideo's model-zoo figures (X3D-XS 0.91, S 2.96,
M 6.72) are fvcore counts at the test crop (XS and S: 182x182, M: 256x256) with the model in training mode,
where fvcore charges batch norm 2.5x its eval cost: 4x182x182 gives 0.91 in training mode, 0.87 in eval mode.
"""
import warnings

import torch
from fvcore.nn import FlopCountAnalysis


def count_flops(model, input_shape):
    """Count one forward of `model` (moved to the CPU, eval mode) on a clip of `input_shape`.

    Returns dict(gflops, params_m = all parameters in millions, unsupported = {op: calls}): the ops fvcore
    has no formula for, which are left out of gflops (fvcore's own warnings about them are silenced).
    """
    model = model.cpu().eval()
    analysis = FlopCountAnalysis(model, torch.zeros(input_shape))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit tracer warnings
        total = analysis.total()
    return dict(gflops=total / 1e9, params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                unsupported=dict(analysis.unsupported_ops()))
