"""Fast paths that leave a model's outputs unchanged (MODEL.CHANNELS_LAST, MODEL.COMPILE, MODEL.TEACHER_AUTOCAST).

Each works in place on the model, so its state-dict keys, its submodules (the taps' hooks) and the model
DeepSpeed wraps stay the same.
"""
import types

import torch
import torch.nn as nn


def has_conv3d(model):
    """Whether `model` has a 3D convolution: a 3D CNN, or a ViT's cube embedding (its stem)."""
    return any(isinstance(m, nn.Conv3d) for m in model.modules())


def _channels_last_input(model, args):
    return (args[0].contiguous(memory_format=torch.channels_last_3d),)


# Devices whose teachers run under bf16 autocast. Not the CPU: bf16 is slow and inexact there.
AUTOCAST_DEVICES = {"cuda"}


def _forward_bf16_on_gpu(model, x):
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type in AUTOCAST_DEVICES):
        return type(model).forward(model, x)


def speed_up(model, m, teacher=False):
    """`model` with the fast paths MODEL (`m`) turns on, in place:
    - CHANNELS_LAST: a model with 3D convolutions gets its clip in the channels_last_3d memory format;
      convolutions follow their input's format, so all its 5-D activations are channels_last_3d. 2D-backbone
      models (TSM), whose convolutions see 4-D frames, are left as they are.
    - TEACHER_AUTOCAST (teachers only): the forward runs under bf16 autocast when its input is on a GPU.
    - COMPILE: `model.compile()`, which compiles its call in place (forward hooks still fire).
    """
    if m.CHANNELS_LAST and has_conv3d(model):
        # The clip, not the weights: DeepSpeed broadcasts every parameter as a byte view, which a
        # channels_last_3d tensor cannot give, and its bf16 and ZeRO optimizers flatten the weights anyway.
        model.register_forward_pre_hook(_channels_last_input)
    if teacher and m.TEACHER_AUTOCAST:
        # A method bound to the model (not a closure over its forward): a deep copy calls its own forward.
        model.forward = types.MethodType(_forward_bf16_on_gpu, model)
    if m.COMPILE:
        model.compile()
    return model
