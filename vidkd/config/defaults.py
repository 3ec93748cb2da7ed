"""Every config key of vidkd with its default, one comment each. Yaml files in configs/ override these;
`KEY VALUE` pairs on the command line override the yaml. A key not listed here is an error."""
from fvcore.common.config import CfgNode

_C = CfgNode()

# Seed for everything random: frame sampling, crops, flips, model init. Same seed -> same run.
_C.SEED = 0
# Where checkpoints, logs, plots and results go.
_C.OUTPUT_DIR = "output/run"

# ----------------------------------------------------------------------------- data
_C.DATA = CfgNode()
# Folder with the manifests `<split>.json` written by the dataset's data_prep script.
_C.DATA.MANIFEST_DIR = "data/synthetic/manifests"
# Manifest used for training (file stem inside MANIFEST_DIR).
_C.DATA.TRAIN_SPLIT = "train"
# Manifest used for evaluation (EPIC-KITCHENS-100: "validation").
_C.DATA.TEST_SPLIT = "test"
# Video decoder tried first: decord | pyav. A video it cannot decode is retried with the other one.
_C.DATA.DECODER = "decord"
# Threads each decoder may use inside one loader worker (0 = library default, usually all cores).
_C.DATA.DECODE_THREADS = 1
# Seconds one clip may take to decode before it is abandoned and counted as failed (0 = no limit).
_C.DATA.DECODE_TIMEOUT = 30.0
# Frame sampling: dense (T frames every SAMPLING_RATE frames, VideoMAE/SlowFast) | segment (TSN: one
# frame from each of T equal segments).
_C.DATA.SAMPLING = "dense"
# Frames per clip (T).
_C.DATA.NUM_FRAMES = 16
# Dense sampling: distance between sampled frames, in frames at TARGET_FPS.
_C.DATA.SAMPLING_RATE = 4
# Dense sampling: frame rate the sampling rate refers to (0 = each video's own rate). With 30, a 60 fps
# video is sampled with twice the stride, so a clip spans the same time in every video.
_C.DATA.TARGET_FPS = 0.0
# Training: side of the square random resized crop.
_C.DATA.TRAIN_CROP_SIZE = 112
# Training: area range of the random resized crop, as a fraction of the decoded frame.
_C.DATA.TRAIN_CROP_SCALE = [0.4, 1.0]
# Training: aspect-ratio range of the random resized crop.
_C.DATA.TRAIN_CROP_RATIO = [0.75, 1.3333]
# Training: random horizontal flip. Off for datasets whose classes are mirror images of each other
# (left vs right, clockwise vs counter-clockwise: the synthetic set).
_C.DATA.FLIP = True
# Testing: the video's short side is resized to this many pixels.
_C.DATA.TEST_SHORT_SIDE = 128
# Testing: side of the square crop(s).
_C.DATA.TEST_CROP_SIZE = 112
# Per-channel mean and std (RGB, in [0, 1]) of the model family: 0.45/0.225 for pytorchvideo models,
# ImageNet 0.485,0.456,0.406 / 0.229,0.224,0.225 for VideoMAE.
_C.DATA.MEAN = [0.45, 0.45, 0.45]
_C.DATA.STD = [0.225, 0.225, 0.225]
# Loader worker processes per rank.
_C.DATA.NUM_WORKERS = 2
# Batches each worker prepares ahead.
_C.DATA.PREFETCH_FACTOR = 2
# Pin host memory for faster copies to the GPU (ignored on the CPU).
_C.DATA.PIN_MEMORY = True
# A failed video is replaced by another sample, up to this many times per item.
_C.DATA.MAX_RETRIES = 10
# The run stops when more than this fraction of a split's videos failed to decode in one epoch.
_C.DATA.MAX_FAIL_FRACTION = 0.05

# ----------------------------------------------------------------------------- models
_C.MODEL = CfgNode()
# The student: a registered model name (vidkd.models.MODELS), e.g. x3d_xs, x3d_s, tsm_mobilenetv2.
_C.MODEL.STUDENT = "x3d_xs"
# The teachers, heterogeneous ViT first, then the homogeneous 3D CNN (e.g. videomae_vit_b, x3d_m).
_C.MODEL.TEACHERS = ["videomae_vit_b", "x3d_m"]
# Number of classes; 0 takes the size of the training manifest's label set.
_C.MODEL.NUM_CLASSES = 0
# Checkpoint of the student (a file or a DeepSpeed checkpoint folder); "" starts from random weights.
_C.MODEL.STUDENT_CHECKPOINT = ""
# Checkpoints of the teachers, in the order of MODEL.TEACHERS; "" starts from random weights.
_C.MODEL.TEACHER_CHECKPOINTS = ["", ""]
# Allow a checkpoint that fills only part of a model (e.g. a backbone without its head).
_C.MODEL.PARTIAL_LOAD = False

# ----------------------------------------------------------------------------- training
_C.TRAIN = CfgNode()
# Clips per batch on each rank.
_C.TRAIN.BATCH_SIZE = 8

# ----------------------------------------------------------------------------- testing
_C.TEST = CfgNode()
# Clips per batch on each rank during evaluation.
_C.TEST.BATCH_SIZE = 8
# Temporal clips per video (evenly spaced; 10 for HMDB51 / Kinetics-400, 5 VideoMAE style).
_C.TEST.NUM_CLIPS = 10
# Spatial crops per clip: 1 (center) or 3 (both ends and the center of the long side).
_C.TEST.NUM_CROPS = 3

# Keys whose value must be one of a fixed set.
CHOICES = {
    "DATA.DECODER": ("decord", "pyav"),
    "DATA.SAMPLING": ("dense", "segment"),
    "TEST.NUM_CROPS": (1, 3),
}


def get_defaults():
    """A fresh, mutable copy of all defaults."""
    return _C.clone()
