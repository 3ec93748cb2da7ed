"""Teachers and students, built by name: `build_model(name, num_classes, num_frames, crop_size)`.

Importing this package registers every model family (video_vit, cnn3d, i3d, small3d, students).
"""
from vidkd.models import cnn3d, i3d, small3d, students, video_vit  # noqa: F401  (registration)
from vidkd.models.base import MODELS, VideoModel, build_from_config, build_model, replace_head  # noqa: F401
