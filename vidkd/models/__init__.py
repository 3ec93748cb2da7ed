"""Teachers and students, built by name: `build_model(name, num_classes, num_frames, crop_size)` for video,
`build_image_model(name, num_classes, crop_size)` for images, `build_from_config` for the config's TASK.

Importing this package registers every model family (video_vit, cnn3d, i3d, small3d, students; image; face).
"""
from vidkd.models import cnn3d, face, i3d, image, small3d, students, video_vit  # noqa: F401  (registration)
from vidkd.models.base import (  # noqa: F401
    IMAGE_MODELS, MODELS, REGISTRIES, VideoModel, build_from_config, build_image_model, build_model, replace_head,
)
