"""What differs between vidkd's tasks (config key TASK), in one place; everything else is one code path.

- `video`: clips `[B, 3, T, H, W]` of DATA.NUM_FRAMES frames; models from `vidkd.models.MODELS`.
- `image`: images `[B, 3, H, W]`; models from `vidkd.models.IMAGE_MODELS`.
- `face`: aligned faces `[B, 3, H, W]` labelled by identity; models from `vidkd.models.FACE_MODELS` give embeddings, a
  margin head of the method's (FACE.MARGIN) trains them, and evaluation verifies pairs of held-out identities
  (`vidkd.engine.verification`) instead of classifying.
"""
IMAGE_TASKS = ("image", "face")  # the tasks whose inputs are single images


def input_size(cfg, crop_key="TRAIN_CROP_SIZE"):
    """The size of one input after the channel axis: (T, S, S) for a clip, (S, S) for an image, S the crop
    DATA.<crop_key>."""
    crop = cfg.DATA[crop_key]
    return (cfg.DATA.NUM_FRAMES, crop, crop) if cfg.TASK == "video" else (crop, crop)
