"""An exponential moving average of the student's weights (TRAIN.EMA), kept in fp32.

`ema <- decay * ema + (1 - decay) * w` after every optimiser step, on an fp32 copy whatever the precision the
student trains in: a bf16 average would round away steps of `(1 - decay) * (w - ema)` below 2^-8 of `ema`, which
with decay 0.999 is nearly all of them. Batch-norm statistics (and any other buffer) are the student's own, copied.
The copy keeps none of the student's hooks (its feature taps would write into the student's taps; its channels-last
hook is a speed-up only) nor its compiled call (MODEL.COMPILE: a copy of it would run the student's own forward, on
the student's weights). Under bf16 / fp16 the average is of the student's weights as the forward uses them (bf16),
not of DeepSpeed's fp32 master copy, which ZeRO partitions over the ranks.
"""
import copy

import torch
import torch.nn as nn


def plain_copy(model):
    """A deep copy of `model` in fp32 with no forward hooks and no compiled call: both belong to the original."""
    average = copy.deepcopy(model).float().eval().requires_grad_(False)
    for m in average.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
        m._compiled_call_impl = None
    return average


class EMA(nn.Module):
    def __init__(self, model, decay):
        super().__init__()
        self.module, self.decay = plain_copy(model), decay

    @torch.no_grad()
    def update(self, model):
        for average, own in zip(self.module.parameters(), model.parameters()):
            average.lerp_(own.detach().float(), 1 - self.decay)  # ema <- ema + (1 - decay)(w - ema)
        for average, own in zip(self.module.buffers(), model.buffers()):
            average.copy_(own)
