"""`make pretrain` options and the presets (one per row of the paper's Table 1, plus `official`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from preprocess.config import option

PRESET_DIR = Path(__file__).resolve().parents[1] / "configs" / "pretrain"


@dataclass
class TrainConfig:
    # method
    method: str = option("simclr", "simclr (InfoNCE over 2N views; TimeAug/HardNeg/FaceSwap/MaskFN build on it) "
                                   "| mocov2 | byol")
    timeaug: bool = option(False, "TimeAug: the positive is another frame of the clip within time_max s")
    time_max: float = option(1.0, "T1, seconds: TimeAug offsets are drawn from a decreasing (triangular) "
                                  "distribution over [0, T1], either direction")
    timeaug_frames: str = option("", "TimeAug offsets counted in sampled frames instead, e.g. '2,3,4,5,6' (the "
                                     "official code's, at 25/6 fps), random sign; empty = by time (time_max)")
    timeaug_frame_weights: str = option("", "weights of timeaug_frames, e.g. '5,4,3,2,1' (empty = equal)")
    hardneg: bool = option(False, "HardNeg: half of the batch's instances are hard negatives, one per anchor: a "
                                  "frame of the same speaker at least hardneg_gap s away, with its own positive")
    hardneg_gap: float = option(3.0, "T2, seconds; also: two views of one clip closer than this are neither "
                                     "positive nor negative (left out of the InfoNCE denominator)")
    faceswap: bool = option(False, "FaceSwap: the positive is its precomputed composite with probability p_swap")
    cutmix: bool = option(False, "CutMix of the centre patch instead of FaceSwap (Table 1 row c), with p_swap")
    p_swap: float = option(0.5, "probability of FaceSwap (or CutMix) for each positive")
    maskfn: bool = option(False, "MaskFN: the n_fn in-batch views with the most similar eye+mouth descriptors "
                                 "(not itself, its positive or its speaker) become extra positives")
    n_fn: int = option(1, "N_FN, false negatives per view")
    fn_weight: float = option(0.5, "lambda: loss = L1 + lambda * L2 (paper 1/2, official code 0.8)")
    temperature: float = option(0.07, "InfoNCE temperature tau")
    positive_in_denominator: bool = option(False, "false: Eq. 1-2 of the paper (positives left out of the "
                                                  "denominator); true: the SimCLR form of the official code")
    # model and optimisation
    arch: str = option("resnet50", "backbone: resnet50 | resnet18 (torchvision, from scratch)")
    proj_hidden: int = option(2048, "projection MLP hidden width (feat -> hidden -> proj_dim)")
    proj_dim: int = option(128, "projection output dimension")
    optimizer: str = option("adam", "adam | sgd")
    lr: float = option(3e-4, "learning rate")
    weight_decay: float = option(1e-4, "weight decay")
    momentum: float = option(0.9, "SGD momentum")
    warm_epochs: float = option(10.0, "constant learning rate for this many epochs, then cosine annealing to 0 "
                                      "at the end (stepped every iteration)")
    epochs: int = option(100, "epochs (an epoch draws anchors_per_clip anchors from every clip)")
    max_steps: int = option(0, "stop after this many steps (0 = epochs decide)")
    batch_size: int = option(256, "instances per step over all ranks (the paper's 256), each with two views; with "
                                  "hardneg half of them are hard negatives, so 128 anchors")
    anchors_per_clip: int = option(1, "anchors each clip gives per epoch")
    image_size: int = option(112, "input side: faces are resized to image_size*128/112, then randomly cropped")
    moco_queue: int = option(65536, "MoCo-v2 queue length (rounded down to a multiple of the global batch)")
    moco_momentum: float = option(0.999, "MoCo-v2 key encoder momentum")
    byol_momentum: float = option(0.996, "BYOL target EMA momentum at the start (cosine-increased to 1)")
    sync_bn: bool = option(False, "SyncBatchNorm across ranks")
    compile: bool = option(False, "torch.compile the model")
    # augmentation
    p_landmark_mask: float = option(0.8, "probability of masking the eyes or the mouth (ellipse filled with the "
                                         "image mean)")
    p_colour: float = option(0.8, "probability of colour jitter (0.4, 0.4, 0.4, 0.2) on the positives")
    p_colour_first: float = option(0.8, "probability of colour jitter on the first views (anchors, hard "
                                        "negatives); the official code: 1")
    p_blur: float = option(0.5, "probability of Gaussian blur")
    blur_kernel: int = option(0, "Gaussian blur kernel side (odd; the official code: 3); 0 = ~10% of the image")
    p_gray: float = option(0.2, "probability of grayscale")
    # run
    seed: int = option(0, "random seed")
    device: str = option("auto", "auto | cpu | cuda")
    workers: int = option(4, "data loader processes per rank (0 = in the main process)")
    shuffle_factor: int = option(4, "the shuffle buffer holds this many times a step's anchors (clips); a step "
                                    "draws its anchors from it without replacement")
    interleave_shards: int = option(16, "shards read side by side into the shuffle buffer")
    log_every: int = option(1, "steps between log lines")
    ckpt_minutes: float = option(10.0, "minutes between checkpoints of the last state")
    ckpt_every: int = option(0, "also checkpoint the last state every this many steps (0 = by time only)")
    dist_timeout_min: float = option(10.0, "minutes a rank waits for the others before the run stops")
    resume: str = option("auto", "auto (continue RUN/checkpoints/last.pt when present, refused when it was made "
                                 "with other settings) | force (continue it anyway) | never (start over) | "
                                 "<checkpoint>")
    logger: str = option("jsonl", "jsonl (RUN/log.jsonl, always written) | tensorboard (also RUN/tensorboard/; "
                                  "needs the tensorboard package: pip install -e '.[tensorboard]')")
    max_bad_steps: int = option(5, "stop after this many consecutive non-finite losses")
    # online monitor
    monitor: str = option("", "folder of labelled expression faces (<class>/*.jpg, e.g. FER2013's train/): the "
                              "frozen backbone's kNN accuracy on it every monitor_every steps; "
                              "checkpoints/best.pt keeps the best")
    monitor_identity: str = option("", "folder of people (<name>/*.jpg, e.g. LFW): FR-KNN every monitor_every "
                                       "steps (lower = less identity)")
    monitor_every: int = option(500, "steps between monitor evaluations (also at the start and the end)")
    monitor_max_images: int = option(2000, "images sampled from each monitor set (class-balanced)")
    monitor_cache: str = option(".cache/monitor", "where the monitor sets' aligned faces are cached")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        from preprocess.config import ConfigError

        raise ConfigError(f"preset {name!r} not found; presets: {', '.join(preset_names())}")
    return path
