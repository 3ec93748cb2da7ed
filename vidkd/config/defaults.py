"""Every config key of vidkd with its default, one comment each, and (RULES, RELATIONS, after them) the values
each may hold. Yaml files in configs/ override these; `KEY VALUE` pairs on the command line override the yaml.
A key not listed here is an error."""
from fvcore.common.config import CfgNode

from vidkd.config.rules import Anything, List, OneOf, OutputDir, Range, Relation, Text

_C = CfgNode()

# Seed for everything random: frame sampling, crops, flips, model init. Same seed -> same run.
_C.SEED = 0
# Where checkpoints, logs, plots and results go.
_C.OUTPUT_DIR = "output/run"
# What is learnt: `video` (clips [B, 3, T, H, W], video models), `image` (images [B, 3, H, W], image models;
# DATA.NUM_FRAMES is not used) or `face` (aligned face images by identity, face models giving embeddings, trained with
# a margin head and evaluated by verification: FACE keys). It selects the dataset, the models, the evaluation and the
# example input that probes them.
_C.TASK = "video"

# ----------------------------------------------------------------------------- data
_C.DATA = CfgNode()
# Folder with the manifests `<split>.json` written by the dataset's data_prep script.
_C.DATA.MANIFEST_DIR = "data/synthetic/manifests"
# Manifest used for training (file stem inside MANIFEST_DIR).
_C.DATA.TRAIN_SPLIT = "train"
# Training on a small labelled set: at most this many videos of each class (of the first label set), drawn
# with SEED from the training manifest (0 = every video). The low-data regime of semi- and few-label work.
_C.DATA.TRAIN_PER_CLASS = 0
# Manifest used for evaluation (EPIC-KITCHENS-100: "validation").
_C.DATA.TEST_SPLIT = "test"
# Manifest of labelled videos the teachers did not train on ("" = none): the dual teacher's DATW estimates each
# teacher's reliability there (DISTILL.DATW_CONFIDENCE heldout_class, DISTILL.DATW_CALIBRATE), since on the
# videos a teacher trained on it is confident and right whether or not it generalises.
_C.DATA.CALIBRATION_SPLIT = ""
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
# Training: with N > 0, CIFAR-style augmentation instead of the random resized crop: zero padding of N pixels
# on every side, then a random TRAIN_CROP_SIZE crop (CIFAR: 4).
_C.DATA.TRAIN_PAD = 0
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
# Seconds a batch may take to arrive from the loader workers (0 = no limit): past it, or when a worker dies,
# the workers are restarted and that batch's videos skipped and counted (a decode hung in native code).
_C.DATA.BATCH_TIMEOUT = 300.0
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
# Number of classes. Training takes the classes of the training manifest (all its label sets, side by side); a
# value here other than 0 must equal their number (checked before training). profile_net and benchmark_distill,
# which read no manifest, build their models with it (0: 400); predict uses it when neither the checkpoint nor the
# test manifest gives the classes.
_C.MODEL.NUM_CLASSES = 0
# Checkpoint of the student (a file or a DeepSpeed checkpoint folder); "" starts from random weights.
_C.MODEL.STUDENT_CHECKPOINT = ""
# Checkpoints of the teachers, in the order of MODEL.TEACHERS; "" starts from random weights.
_C.MODEL.TEACHER_CHECKPOINTS = ["", ""]
# Patch size (pixels) of the VideoMAE ViTs; 0 keeps 16, the size of the official checkpoints.
_C.MODEL.VIT_PATCH_SIZE = 0
# Token embedding of the VideoMAE ViTs: patch (one cube conv, as VideoMAE and its checkpoints) | conv (two
# 3x3x3 convs before the cube conv, for small ViTs trained from scratch).
_C.MODEL.VIT_STEM = "patch"
# Number of blocks of the VideoMAE ViTs; 0 keeps the size's own (12 for Ti/S/B, 24 for L).
_C.MODEL.VIT_DEPTH = 0
# Scale of the VideoMAE ViTs' initial classifier weights: 0.001 (VideoMAE fine-tuning of a pretrained backbone:
# a near-uniform start) | 1.0 (training from scratch: with 0.001 a small ViT barely leaves chance in a short run).
_C.MODEL.VIT_HEAD_INIT_SCALE = 0.001
# 3D CNNs (student and teachers) in the channels_last_3d memory format: faster convolutions on GPUs and recent
# CPUs; same outputs.
_C.MODEL.CHANNELS_LAST = True
# torch.compile the student and the teachers (first steps slower while compiling; same outputs).
_C.MODEL.COMPILE = False
# On the GPU, the frozen teachers run under bf16 autocast (their outputs are cast to fp32 for the losses).
_C.MODEL.TEACHER_AUTOCAST = True
# Allow a checkpoint that fills only part of a model (e.g. a backbone without its head).
_C.MODEL.PARTIAL_LOAD = False

# ----------------------------------------------------------------------------- training
_C.TRAIN = CfgNode()
# Clips per batch on each rank (DeepSpeed's micro batch).
_C.TRAIN.BATCH_SIZE = 8
# Epochs to train.
_C.TRAIN.EPOCHS = 30
# Evaluate on the test split every this many epochs (and always after the last one).
_C.TRAIN.EVAL_PERIOD = 5
# Save a checkpoint every this many epochs (and always after the last one).
_C.TRAIN.CHECKPOINT_PERIOD = 1
# Also save a checkpoint every this many batches within an epoch (0 = only at epoch ends), so that a killed run
# resumes mid-epoch (`--resume auto`: the sampler skips what the run already trained on).
_C.TRAIN.CHECKPOINT_STEPS = 0
# Complete checkpoints kept in OUTPUT_DIR/checkpoints (the newest ones).
_C.TRAIN.KEEP_CHECKPOINTS = 3
# A step whose loss has a NaN or Inf term is skipped (and counted); this many in a row stop the run.
_C.TRAIN.MAX_BAD_STEPS = 20
# Deterministic algorithms only (torch.use_deterministic_algorithms): a run and its resumed copy are
# bit-identical on the GPU too (on the CPU they are already with a fixed thread count), at some speed cost.
_C.TRAIN.DETERMINISTIC = False
# Batches whose gradients are summed before one optimiser step.
_C.TRAIN.GRAD_ACCUM_STEPS = 1
# Clip the global gradient norm to this value (0 = no clipping).
_C.TRAIN.CLIP_GRAD = 0.0
# Keep an exponential moving average of the student's weights, evaluated and exported instead of the raw ones.
_C.TRAIN.EMA = False
# EMA decay per optimiser step.
_C.TRAIN.EMA_DECAY = 0.999

# ----------------------------------------------------------------------------- optimiser
_C.SOLVER = CfgNode()
# sgd (momentum 0.9, nesterov) | adamw (betas 0.9, 0.999).
_C.SOLVER.OPTIMIZER = "sgd"
# Peak learning rate, reached at the end of the warm-up, then cosine decay to MIN_LR.
_C.SOLVER.BASE_LR = 0.1
# Learning rate at the end of the cosine schedule.
_C.SOLVER.MIN_LR = 0.0
# Epochs of linear warm-up from 0.
_C.SOLVER.WARMUP_EPOCHS = 1.0
# Weight decay of weights; norms, biases and other 1-D parameters get none.
_C.SOLVER.WEIGHT_DECAY = 5e-5
# SGD momentum.
_C.SOLVER.MOMENTUM = 0.9

# ----------------------------------------------------------------------------- DeepSpeed
_C.DEEPSPEED = CfgNode()
# ZeRO stage (0: plain data parallel, 1: optimiser states, 2: also gradients sharded).
_C.DEEPSPEED.ZERO_STAGE = 0
# Precision of what DeepSpeed trains (student and training-only heads; the frozen teachers run outside it, in fp32
# or under MODEL.TEACHER_AUTOCAST): fp32 | bf16 (weights and activations in bf16, fp32 master weights in the
# optimiser; losses in fp32) | fp16 (the same with dynamic loss scaling; GPUs only: DeepSpeed's CPU accelerator
# has no fp16). The CPU runs bf16 too, but more slowly than fp32.
_C.DEEPSPEED.PRECISION = "bf16"

# ----------------------------------------------------------------------------- distillation
_C.DISTILL = CfgNode()
# ce (student alone, or a teacher fine-tuned) | kd | dkd | fitnet | rkd | ofa | crd | pat | fbt | dual_teacher |
# cafd | iled_rpsd | embedding (TASK face; ce, fitnet and rkd train face models too).
_C.DISTILL.METHOD = "dual_teacher"
# Single-teacher methods: which of MODEL.TEACHERS teaches (0 = the ViT, 1 = the 3D CNN).
_C.DISTILL.TEACHER_INDEX = 0
# Weight of the cross-entropy with the labels.
_C.DISTILL.CE_WEIGHT = 1.0
# Softmax temperature T of the logit losses (KD, DKD, DATW).
_C.DISTILL.TEMPERATURE = 4.0
# Weight of the logit loss: KD / DKD / OFA / DATW (alpha in METHODS.md 2.3).
_C.DISTILL.LOGIT_WEIGHT = 1.0
# Weight of the feature loss: FitNet / CRD / SDD (beta in METHODS.md 2.3) / embedding (w, TASK face).
_C.DISTILL.FEATURE_WEIGHT = 1.0
# Weight gamma of RKD on pooled embeddings: of the rkd method (which needs it above 0) and of the dual teacher
# (0 = off).
_C.DISTILL.RKD_WEIGHT = 0.0
# DKD: weights of the target-class and non-target-class terms, and warm-up epochs.
_C.DISTILL.DKD_ALPHA = 1.0
_C.DISTILL.DKD_BETA = 8.0
_C.DISTILL.DKD_WARMUP = 20
# OFA: exponent eps of the target enhancement (1.0 = plain KD + CE).
_C.DISTILL.OFA_EPS = 1.5
# CRD: width of the embedding heads, negatives per sample drawn from the memory banks, temperature.
_C.DISTILL.CRD_DIM = 128
_C.DISTILL.CRD_NEGATIVES = 4096
_C.DISTILL.CRD_TEMPERATURE = 0.07
# CRD: momentum of the memory banks, M[i] <- normalise(m M[i] + (1 - m) v)
_C.DISTILL.CRD_MOMENTUM = 0.5
# PAT (METHODS.md 3): tokens per student stage q (a square), RAA width d and heads, RAA on (off: patch embeddings and
# aligners only, the paper's base), AFP prompts on, their feedback on (off: zeros), the teacher stages prompted
# (0-based), gamma (weight of T^2 KL(p_t || p_t'), the prompted teacher kept near the teacher).
_C.DISTILL.PAT_TOKENS = 16
_C.DISTILL.PAT_DIM = 512
_C.DISTILL.PAT_HEADS = 8
_C.DISTILL.PAT_RAA = True
_C.DISTILL.PAT_AFP = True
_C.DISTILL.PAT_FEEDBACK = True
_C.DISTILL.PAT_AFP_STAGES = [0, 1, 2, 3]
_C.DISTILL.PAT_REG_WEIGHT = 1.0
# FBT (METHODS.md 4): the knowledge pairs, each "teacher then learner" of t (teacher), s (student), f (fusion model);
# InfoNCE on the pooled features (projected to FBT_DIM, temperature learnable from FBT_TEMPERATURE) and the OFA loss
# on the logits, each switchable; L2G's Swin block (off: its patch embedding only).
_C.DISTILL.FBT_PAIRS = ["ts", "tf", "fs"]
_C.DISTILL.FBT_INFONCE = True
_C.DISTILL.FBT_OFA = True
_C.DISTILL.FBT_L2G_BLOCK = True
_C.DISTILL.FBT_DIM = 256
_C.DISTILL.FBT_TEMPERATURE = 0.07
# CAFD (METHODS.md 5): URFM's local centres L (a square), distance buckets and gamma (weight of the face-landmark
# distance; 0: no face positional term), the common width d of h_T and h_S, MSA heads over the L local features.
_C.DISTILL.CAFD_QUERIES = 49
_C.DISTILL.CAFD_BUCKETS = 32
_C.DISTILL.CAFD_GAMMA = 1.0
_C.DISTILL.CAFD_DIM = 128
_C.DISTILL.CAFD_HEADS = 4
# CAFD: URFM on (off: fixed regions, no attention term), APT on with t prompts per teacher stage (off: no prompts).
_C.DISTILL.CAFD_URFM = True
_C.DISTILL.CAFD_APT = True
_C.DISTILL.CAFD_PROMPTS = 10
# CAFD: lambda_1 (MSE of the URFM attention maps), lambda_2 (MSE of MSA(h)), weight of L_FR^T (the prompted teacher's
# margin loss, which keeps it a face model).
_C.DISTILL.CAFD_ATTN_WEIGHT = 1.0
_C.DISTILL.CAFD_FEATURE_WEIGHT = 1.0
_C.DISTILL.CAFD_TEACHER_FR_WEIGHT = 1.0
# ILED + RPSD (METHODS.md 6) and the embedding baselines (TASK face).
# ILED + RPSD: weight lambda_ILED of the instance-level embedding loss (0 = off: RPSD only).
_C.DISTILL.ILED_WEIGHT = 1.0
# ILED + RPSD: weight lambda_RPSD of the pairwise similarity loss against the memory banks (0 = off: ILED only).
_C.DISTILL.RPSD_WEIGHT = 40.0
# ILED + RPSD: the memory banks hold this many batches of past embeddings (ILED_RPSD_BANK x TRAIN.BATCH_SIZE).
_C.DISTILL.ILED_RPSD_BANK = 3
# embedding: the loss between the student's and the teacher's embedding, weighted by FEATURE_WEIGHT: mse | cosine.
_C.DISTILL.EMBED_LOSS = "mse"
# DATW teacher weights: adaptive | fixed (0.5 / 0.5) | vit_only | cnn_only.
_C.DISTILL.DATW_MODE = "adaptive"
# DATW confidence c_k: true_class (softmax(z_k)[y] on the training clip) | max_prob | neg_entropy |
# heldout_class (the mean of softmax(z_k)[y] over the DATA.CALIBRATION_SPLIT videos of class y).
_C.DISTILL.DATW_CONFIDENCE = "true_class"
# DATW: divide each teacher's logits by a temperature fitted on DATA.CALIBRATION_SPLIT (minimum NLL), in the
# confidence, the discrepancy and the fused target: an over-confident (memorising) teacher gets softer targets.
_C.DISTILL.DATW_CALIBRATE = False
# DATW discrepancy d_k: kl (KL(p_k || p_s) at T) | cosine (1 - cos of the logits).
_C.DISTILL.DATW_DISCREPANCY = "kl"
# DATW: where the discrepancy counts: all | teacher_right (only on samples whose label the teacher predicts).
_C.DISTILL.DATW_DISCREPANCY_WHERE = "all"
# DATW: weight lambda_d of the discrepancy in the score (0 = confidence only).
_C.DISTILL.DATW_LAMBDA = 1.0
# DATW: temperature tau_w of the softmax over teachers.
_C.DISTILL.DATW_TAU = 1.0
# SDD on/off (off: the dual teacher is DATW + CE only).
_C.DISTILL.SDD = True
# SDD: common width d of the projected teacher structures.
_C.DISTILL.SDD_DIM = 256
# SDD projections phi: fixed (seeded orthogonal, not trained) | learned (phi_V fit to phi_C on teacher features).
_C.DISTILL.SDD_PHI = "fixed"
# Teacher-output cache: live (no cache: the teachers run every step) | auto (build it if missing or stale, then train from it) |
# require (train from it; fail if missing or stale). Only for methods that need teacher outputs alone.
_C.DISTILL.CACHE = "live"
# Folder of the cache ("" = teacher_cache/ beside the training manifest).
_C.DISTILL.CACHE_DIR = ""
# Augmented views per training video in the cache; each epoch draws one of them per video.
_C.DISTILL.CACHE_VIEWS = 8

# ----------------------------------------------------------------------------- face recognition (TASK face)
_C.FACE = CfgNode()
# The margin head that trains the embedding (L_FR, METHODS.md 5, 6): arcface (s 64, m 0.5) | cosface (s 64,
# m 0.35) | sphereface2 (r 40, m 0.4, lambda 0.7, t 3). Training-only: the exported student gives the embedding.
_C.FACE.MARGIN = "arcface"
# Pair list of the test split (data_prep/prepare_faces.py's CSV, inside DATA.MANIFEST_DIR): verified at every
# evaluation (10-fold accuracy, TPR at FPR).
_C.FACE.PAIRS = "pairs.csv"
# Further verification sets tools/test_net.py runs: insightface `.bin` files (LFW, CFP-FP, AgeDB-30, ...) and LFW
# `pairs.txt` lists (their images under the folder holding the list, `<name>/<name>_0001.jpg`).
_C.FACE.VERIFICATION_SETS = []
# An image's embedding is the sum of the embeddings of it and its mirror image (insightface's flip test).
_C.FACE.FLIP = True
# Folds of the accuracy protocol (LFW: 10; the threshold is chosen on the other folds).
_C.FACE.FOLDS = 10
# False-positive rates at which the true-positive rate is reported (IJB: 1e-4, 1e-5, 1e-6), besides the lowest
# rate the pairs can measure.
_C.FACE.FPRS = [1e-4, 1e-5, 1e-6]

# ----------------------------------------------------------------------------- testing
_C.TEST = CfgNode()
# Clips per batch on each rank during evaluation.
_C.TEST.BATCH_SIZE = 8
# Temporal clips per video (evenly spaced; 10 for HMDB51 / Kinetics-400, 5 VideoMAE style).
_C.TEST.NUM_CLIPS = 10
# Spatial crops per clip: 1 (center) or 3 (both ends and the center of the long side).
_C.TEST.NUM_CROPS = 3

# ----------------------------------------------------------------------------- export (tools/export_student.py)
_C.EXPORT = CfgNode()
# ONNX opset of the exported student.
_C.EXPORT.ONNX_OPSET = 17

# What each key may hold beyond its default's type (which the loader checks first), and the RELATIONS between
# keys: every key has a rule here. The loader refuses any other value, naming the key and the file and line (or
# the command line) that set it. The bounds are sanity bounds: past them a value is a typo, or would allocate
# far more than any machine has, before anything could fail by itself.
ANY, PATH, NAME = Anything(), Text(empty=True), Text(empty=False)
SECONDS = Range(0, 86400)  # 0 = no limit; a day at most (a larger timeout overflows the timers)
RULES = {
    "SEED": Range(0, 2**32 - 1),  # numpy's and torch's seeds (torch adds the epoch)
    "TASK": OneOf("video", "image", "face"),
    "OUTPUT_DIR": OutputDir(),
    "DATA.MANIFEST_DIR": NAME,
    "DATA.TRAIN_SPLIT": NAME,
    "DATA.TRAIN_PER_CLASS": Range(0),
    "DATA.TEST_SPLIT": NAME,
    "DATA.CALIBRATION_SPLIT": PATH,
    "DATA.DECODER": OneOf("decord", "pyav"),
    "DATA.DECODE_THREADS": Range(0, 256),
    "DATA.DECODE_TIMEOUT": SECONDS,
    "DATA.SAMPLING": OneOf("dense", "segment"),
    "DATA.NUM_FRAMES": Range(1, 512),
    "DATA.SAMPLING_RATE": Range(1, 1024),
    "DATA.TARGET_FPS": Range(0, 1000),
    "DATA.TRAIN_CROP_SIZE": Range(1, 1024),
    "DATA.TRAIN_CROP_SCALE": List(Range(0, 1, above=True), 2, ordered=True),
    "DATA.TRAIN_PAD": Range(0, 1024),
    "DATA.TRAIN_CROP_RATIO": List(Range(0, above=True), 2, ordered=True),
    "DATA.FLIP": ANY,
    "DATA.TEST_SHORT_SIDE": Range(1, 1024),
    "DATA.TEST_CROP_SIZE": Range(1, 1024),
    "DATA.MEAN": List(Range(0, 1), 3),
    "DATA.STD": List(Range(0, 1, above=True), 3),
    "DATA.NUM_WORKERS": Range(0, 256),
    "DATA.PREFETCH_FACTOR": Range(1),
    "DATA.BATCH_TIMEOUT": SECONDS,
    "DATA.PIN_MEMORY": ANY,
    "DATA.MAX_RETRIES": Range(0, 1000),
    "DATA.MAX_FAIL_FRACTION": Range(0, 1),
    "MODEL.STUDENT": NAME,  # the model registry is looked up by trainer.check_config
    "MODEL.TEACHERS": List(NAME, (0, 2)),
    "MODEL.NUM_CLASSES": Range(0, 100_000),
    "MODEL.STUDENT_CHECKPOINT": PATH,
    "MODEL.TEACHER_CHECKPOINTS": List(PATH, (0, 2)),  # one per teacher: checked by trainer.check_config
    "MODEL.VIT_PATCH_SIZE": Range(0, 1024),
    "MODEL.VIT_STEM": OneOf("patch", "conv"),
    "MODEL.VIT_DEPTH": Range(0, 128),
    "MODEL.VIT_HEAD_INIT_SCALE": Range(0),
    "MODEL.CHANNELS_LAST": ANY,
    "MODEL.COMPILE": ANY,
    "MODEL.TEACHER_AUTOCAST": ANY,
    "MODEL.PARTIAL_LOAD": ANY,
    "TRAIN.BATCH_SIZE": Range(1),
    "TRAIN.EPOCHS": Range(1, 100_000),
    "TRAIN.EVAL_PERIOD": Range(1),
    "TRAIN.CHECKPOINT_PERIOD": Range(1),
    "TRAIN.CHECKPOINT_STEPS": Range(0),
    "TRAIN.KEEP_CHECKPOINTS": Range(1),
    "TRAIN.MAX_BAD_STEPS": Range(1),
    "TRAIN.DETERMINISTIC": ANY,
    "TRAIN.GRAD_ACCUM_STEPS": Range(1),
    "TRAIN.CLIP_GRAD": Range(0),
    "TRAIN.EMA": ANY,
    "TRAIN.EMA_DECAY": Range(0, 1),
    "SOLVER.OPTIMIZER": OneOf("sgd", "adamw"),
    "SOLVER.BASE_LR": Range(0, above=True),
    "SOLVER.MIN_LR": Range(0),
    "SOLVER.WARMUP_EPOCHS": Range(0),
    "SOLVER.WEIGHT_DECAY": Range(0),
    "SOLVER.MOMENTUM": Range(0, 1),
    "DEEPSPEED.ZERO_STAGE": OneOf(0, 1, 2),
    "DEEPSPEED.PRECISION": OneOf("fp32", "bf16", "fp16"),
    "DISTILL.METHOD": OneOf("ce", "kd", "dkd", "fitnet", "rkd", "ofa", "crd", "pat", "fbt", "dual_teacher",
                            "cafd", "iled_rpsd", "embedding"),
    "DISTILL.TEACHER_INDEX": OneOf(0, 1),
    "DISTILL.CE_WEIGHT": Range(0),
    "DISTILL.TEMPERATURE": Range(0, above=True),
    "DISTILL.LOGIT_WEIGHT": Range(0),
    "DISTILL.FEATURE_WEIGHT": Range(0),
    "DISTILL.RKD_WEIGHT": Range(0),
    "DISTILL.DKD_ALPHA": Range(0),
    "DISTILL.DKD_BETA": Range(0),
    "DISTILL.DKD_WARMUP": Range(0),
    "DISTILL.OFA_EPS": Range(0, above=True),
    "DISTILL.CRD_DIM": Range(1, 65536),
    "DISTILL.CRD_NEGATIVES": Range(1, 10**6),
    "DISTILL.CRD_TEMPERATURE": Range(0, above=True),
    "DISTILL.CRD_MOMENTUM": Range(0, 1),
    "DISTILL.PAT_TOKENS": Range(1, 4096),
    "DISTILL.PAT_DIM": Range(1, 65536),
    "DISTILL.PAT_HEADS": Range(1, 1024),
    "DISTILL.PAT_RAA": ANY,
    "DISTILL.PAT_AFP": ANY,
    "DISTILL.PAT_FEEDBACK": ANY,
    "DISTILL.PAT_AFP_STAGES": List(Range(0, 64), (0, 64), ordered=True),
    "DISTILL.PAT_REG_WEIGHT": Range(0),
    "DISTILL.FBT_PAIRS": List(OneOf("ts", "tf", "fs"), (1, 3)),
    "DISTILL.FBT_INFONCE": ANY,
    "DISTILL.FBT_OFA": ANY,
    "DISTILL.FBT_L2G_BLOCK": ANY,
    "DISTILL.FBT_DIM": Range(1, 65536),
    "DISTILL.FBT_TEMPERATURE": Range(0, above=True),
    "DISTILL.CAFD_QUERIES": Range(1, 4096),
    "DISTILL.CAFD_BUCKETS": Range(1, 4096),
    "DISTILL.CAFD_GAMMA": Range(0),
    "DISTILL.CAFD_DIM": Range(1, 65536),
    "DISTILL.CAFD_HEADS": Range(1, 1024),
    "DISTILL.CAFD_URFM": ANY,
    "DISTILL.CAFD_APT": ANY,
    "DISTILL.CAFD_PROMPTS": Range(1, 4096),
    "DISTILL.CAFD_ATTN_WEIGHT": Range(0),
    "DISTILL.CAFD_FEATURE_WEIGHT": Range(0),
    "DISTILL.CAFD_TEACHER_FR_WEIGHT": Range(0),
    "DISTILL.ILED_WEIGHT": Range(0),
    "DISTILL.RPSD_WEIGHT": Range(0),
    "DISTILL.ILED_RPSD_BANK": Range(1, 1024),
    "DISTILL.EMBED_LOSS": OneOf("mse", "cosine"),
    "DISTILL.DATW_MODE": OneOf("adaptive", "fixed", "vit_only", "cnn_only"),
    "DISTILL.DATW_CONFIDENCE": OneOf("true_class", "max_prob", "neg_entropy", "heldout_class"),
    "DISTILL.DATW_CALIBRATE": ANY,
    "DISTILL.DATW_DISCREPANCY": OneOf("kl", "cosine"),
    "DISTILL.DATW_DISCREPANCY_WHERE": OneOf("all", "teacher_right"),
    "DISTILL.DATW_LAMBDA": Range(0),
    "DISTILL.DATW_TAU": Range(0, above=True),
    "DISTILL.SDD": ANY,
    "DISTILL.SDD_DIM": Range(1, 65536),
    "DISTILL.SDD_PHI": OneOf("fixed", "learned"),
    "DISTILL.CACHE": OneOf("live", "auto", "require"),
    "DISTILL.CACHE_DIR": PATH,
    "DISTILL.CACHE_VIEWS": Range(1, 1024),
    "FACE.MARGIN": OneOf("arcface", "cosface", "sphereface2"),
    "FACE.PAIRS": NAME,
    "FACE.VERIFICATION_SETS": List(NAME, (0, 64)),
    "FACE.FLIP": ANY,
    "FACE.FOLDS": Range(2, 100),
    "FACE.FPRS": List(Range(0, 1, above=True), (0, 16)),
    "TEST.BATCH_SIZE": Range(1),
    "TEST.NUM_CLIPS": Range(1, 1024),
    "TEST.NUM_CROPS": OneOf(1, 3),
    "EXPORT.ONNX_OPSET": Range(7, 20),  # the opsets of torch's TorchScript-based ONNX exporter
}

BATCH_GIB = 16  # the largest batch of clips (float32) the loader may assemble


def _fits(batch_size, num_frames, crop_size):
    return batch_size * 3 * num_frames * crop_size**2 * 4 <= BATCH_GIB * 2**30


RELATIONS = [
    Relation(("TRAIN.BATCH_SIZE", "DATA.NUM_FRAMES", "DATA.TRAIN_CROP_SIZE"), _fits,
             f"a training batch (TRAIN.BATCH_SIZE x 3 x DATA.NUM_FRAMES x DATA.TRAIN_CROP_SIZE^2 float32) must fit in "
             f"{BATCH_GIB} GiB"),
    Relation(("TEST.BATCH_SIZE", "DATA.NUM_FRAMES", "DATA.TEST_CROP_SIZE"), _fits,
             f"a test batch (TEST.BATCH_SIZE x 3 x DATA.NUM_FRAMES x DATA.TEST_CROP_SIZE^2 float32) must fit in "
             f"{BATCH_GIB} GiB"),
    Relation(("DATA.TEST_CROP_SIZE", "DATA.TEST_SHORT_SIDE"), lambda crop, side: crop <= side,
             "the test crop must fit in the resized frame: DATA.TEST_CROP_SIZE <= DATA.TEST_SHORT_SIDE"),
    Relation(("SOLVER.MIN_LR", "SOLVER.BASE_LR"), lambda low, base: low <= base,
             "the schedule decays from SOLVER.BASE_LR to SOLVER.MIN_LR: MIN_LR <= BASE_LR"),
    Relation(("SOLVER.WARMUP_EPOCHS", "TRAIN.EPOCHS"), lambda warmup, epochs: warmup <= epochs,
             "the warm-up must end within the run: SOLVER.WARMUP_EPOCHS <= TRAIN.EPOCHS"),
    Relation(("DISTILL.RKD_WEIGHT", "DISTILL.METHOD"), lambda weight, method: method != "rkd" or weight > 0,
             "the rkd method needs DISTILL.RKD_WEIGHT above 0 (e.g. 1.0): at 0 it would train with CE alone"),
    Relation(("DISTILL.ILED_WEIGHT", "DISTILL.RPSD_WEIGHT", "DISTILL.METHOD"),
             lambda iled, rpsd, method: method != "iled_rpsd" or iled + rpsd > 0,
             "the iled_rpsd method needs DISTILL.ILED_WEIGHT or DISTILL.RPSD_WEIGHT above 0: with both 0 it would "
             "train with the margin loss alone (DISTILL.METHOD ce)"),
    Relation(("DATA.CALIBRATION_SPLIT", "DISTILL.DATW_CONFIDENCE", "DISTILL.DATW_CALIBRATE"),
             lambda split, confidence, calibrate: bool(split) or not (confidence == "heldout_class" or calibrate),
             "DISTILL.DATW_CONFIDENCE heldout_class and DISTILL.DATW_CALIBRATE are estimated on videos the teachers "
             "did not train on: set DATA.CALIBRATION_SPLIT to their manifest"),
    Relation(("MODEL.VIT_PATCH_SIZE", "MODEL.VIT_STEM"), lambda patch, stem: stem != "conv" or (patch or 16) % 4 == 0,
             "the ViTs' conv stem needs MODEL.VIT_PATCH_SIZE (0: 16) divisible by 4"),
]


def get_defaults():
    """A fresh, mutable copy of all defaults."""
    return _C.clone()
