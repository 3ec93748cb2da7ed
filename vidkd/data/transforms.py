"""Spatial transforms on video tensors with torchvision.transforms.v2.

Input: uint8 frames `[T, H, W, 3]` as decoded. Output: float `[3, T, H, W]`, normalised with the config's
per-family mean / std. Training: random resized crop (or, CIFAR style, zero padding and a random crop of the crop
size) -> (flip) -> normalise. The crop box is drawn as a
fraction of the frame's area and aspect, so it is the same in distribution with or without a short-side
resize before it; cropping the decoded frame and resizing once to the crop size saves a second
interpolation (and antialiases from the full-resolution pixels).
Testing: short-side resize -> crop `k` of `n_crops` (1: center; 3: both ends and the center of the long
side, SlowFast style) -> normalise. Every frame of a clip gets the same crop and flip.
"""
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


def _to_video(frames):
    return tv_tensors.Video(frames.permute(0, 3, 1, 2))  # [T, 3, H, W]


def _finish(video, mean, std):
    """uint8 [T, 3, H, W] -> float [3, T, H, W], (x / 255 - mean) / std per channel."""
    x = video.as_subclass(torch.Tensor).permute(1, 0, 2, 3).contiguous().float()
    shape = (3, 1, 1, 1)
    return x.sub_(torch.tensor(mean).view(shape) * 255).div_(torch.tensor(std).view(shape) * 255)


class TrainTransform:
    def __init__(self, crop_size, scale, ratio, flip, mean, std, pad=0):
        if pad:
            steps = [v2.Pad(pad), v2.RandomCrop(crop_size)]
        else:
            steps = [v2.RandomResizedCrop(crop_size, scale=tuple(scale), ratio=tuple(ratio), antialias=True)]
        if flip:
            steps.append(v2.RandomHorizontalFlip())
        self.augment, self.mean, self.std = v2.Compose(steps), mean, std

    def __call__(self, frames):
        """Random draws use torch's generator: seed it (torch.manual_seed) for a reproducible crop."""
        return _finish(self.augment(_to_video(frames)), self.mean, self.std)


class TestTransform:
    __test__ = False  # not a pytest test class

    def __init__(self, short_side, crop_size, mean, std):
        self.short_side, self.crop_size, self.mean, self.std = short_side, crop_size, mean, std

    def __call__(self, frames, crop, n_crops):
        video = F.resize(_to_video(frames), self.short_side, antialias=True)
        return _finish(spatial_crop(video, self.crop_size, crop, n_crops), self.mean, self.std)


def spatial_crop(video, size, crop, n_crops):
    """Square crop `crop` of `n_crops` on a `[..., H, W]` tensor: n_crops 1 -> center; 3 -> start,
    center and end of the longer side (centered on the shorter)."""
    if n_crops not in (1, 3) or not 0 <= crop < n_crops:
        raise ValueError(f"crop {crop} of {n_crops}: n_crops must be 1 or 3")
    h, w = video.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    if n_crops == 3 and crop != 1:  # crop 0: start of the long side, 1: center, 2: end
        if h > w:
            top = 0 if crop == 0 else h - size
        else:
            left = 0 if crop == 0 else w - size
    return F.crop(video, max(top, 0), max(left, 0), size, size)
