"""`make pretrain` options and the presets (one per row of the paper's Table 1, plus `official`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sslfer.config import option
from sslfer.device import AMP_MODES


def method_names() -> tuple[str, ...]:
    from train.methods import METHODS  # the registry imports torch: only when an option is checked

    return tuple(METHODS)


PRESET_DIR = Path(__file__).resolve().parents[1] / "configs" / "pretrain"


@dataclass
class TrainConfig:
    # method
    method: str = option("simclr", "simclr (InfoNCE over 2N views; TimeAug/HardNeg/FaceSwap/MaskFN build on it) "
                                   "| mocov2 | byol | a method of yours (train/methods/)", choices=method_names)
    timeaug: bool = option(False, "TimeAug: the positive is another frame of the clip within time_max s")
    time_max: float = option(1.0, "T1, seconds: TimeAug offsets are drawn from a decreasing (triangular) "
                                  "distribution over [0, T1], either direction", between=(0.0, None))
    timeaug_frames: str = option("", "TimeAug offsets counted in sampled frames instead, e.g. '2,3,4,5,6' (the "
                                     "official code's, at 25/6 fps), random sign; empty = by time (time_max)")
    timeaug_frame_weights: str = option("", "weights of timeaug_frames, e.g. '5,4,3,2,1' (empty = equal)")
    hardneg: bool = option(False, "HardNeg: half of the batch's instances are hard negatives, one per anchor: a "
                                  "frame of the same speaker at least hardneg_gap s away, with its own positive")
    hardneg_gap: float = option(3.0, "T2, seconds; the hard negative and its positive are drawn >= T2 from the "
                                     "anchor and its positive when the clip allows; two views of one clip "
                                     "closer than T2 in different instances' groups (a clip repeated in a step: "
                                     "tiny corpora) are neither positive nor negative", between=(0.0, None))
    faceswap: bool = option(False, "FaceSwap: the positive is its precomputed composite with probability p_swap")
    cutmix: bool = option(False, "CutMix of the centre patch instead of FaceSwap (Table 1 row c), with p_swap")
    p_swap: float = option(0.5, "probability of FaceSwap (or CutMix) for each positive", between=(0.0, 1.0))
    positives: str = option("", "more positive-pair pieces by name, comma-separated: yours (train/positives/, "
                                "SSLFER_PLUGINS) or the built-ins timeaug, faceswap, cutmix")
    maskfn: bool = option(False, "MaskFN: the n_fn in-batch views with the most similar eye+mouth descriptors "
                                 "(not itself, its positive or its speaker) become extra positives")
    n_fn: int = option(1, "N_FN, false negatives per view", between=(1, None))
    fn_weight: float = option(0.5, "lambda: loss = L1 + lambda * L2 (paper 1/2, official code 0.8)",
                              between=(0.0, None))
    temperature: float = option(0.07, "InfoNCE temperature tau", between=(0.001, None))
    positive_in_denominator: bool = option(False, "false: Eq. 1-2 of the paper (positives left out of the "
                                                  "denominator); true: the SimCLR form of the official code")
    # model and optimisation
    arch: str = option("resnet50", "backbone: resnet50 | resnet18 (torchvision, from scratch)",
                       choices=("resnet50", "resnet18"))
    proj_hidden: int = option(2048, "projection MLP hidden width (feat -> hidden -> proj_dim)", between=(1, None))
    proj_dim: int = option(128, "projection output dimension", between=(1, None))
    optimizer: str = option("adam", "adam | sgd", choices=("adam", "sgd"))
    lr: float = option(3e-4, "learning rate", between=(0.0, None))
    weight_decay: float = option(1e-4, "weight decay", between=(0.0, None))
    momentum: float = option(0.9, "SGD momentum", between=(0.0, 1.0))
    warm_epochs: float = option(10.0, "constant learning rate for this many epochs, then cosine annealing to 0 "
                                      "at the end (stepped every iteration)", between=(0.0, None))
    epochs: int = option(250, "epochs (an epoch draws anchors_per_clip anchors from every clip); the paper's "
                              "Table 3 evaluates its method at 150-250 (best at 210) from checkpoints saved every "
                              "5 epochs once top-1 >= 60%", between=(1, None))
    max_steps: int = option(0, "stop after this many steps (0 = epochs decide)", between=(0, None))
    max_minutes: float = option(0.0, "end the run after this many minutes of steps in this launch, as if its steps "
                                     "were done (backbone.pt, summary.json; the schedule is not shortened): "
                                     "methods compared at equal wall-clock time; 0 = no limit", between=(0.0, None))
    batch_size: int = option(256, "instances per step over all ranks (the paper's 256), each with two views; with "
                                  "hardneg half of them are hard negatives, so 128 anchors", between=(2, None))
    anchors_per_clip: int = option(1, "anchors each clip gives per epoch", between=(1, None))
    image_size: int = option(112, "input side: faces are resized to image_size*128/112, then randomly cropped",
                             between=(16, None))
    moco_queue: int = option(65536, "MoCo-v2 queue length (rounded down to a multiple of the global batch)",
                             between=(1, None))
    moco_momentum: float = option(0.999, "MoCo-v2 key encoder momentum", between=(0.0, 1.0))
    byol_momentum: float = option(0.996, "BYOL target EMA momentum at the start (cosine-increased to 1)",
                                  between=(0.0, 1.0))
    sync_bn: bool = option(False, "SyncBatchNorm across ranks")
    amp: str = option("auto", "mixed precision: auto (bf16 on a GPU that has it, else fp16; off on a CPU) | bf16 | "
                              "fp16 (with a gradient scaler, its state in the checkpoint) | off (fp32)",
                      choices=AMP_MODES)
    compile: bool = option(False, "torch.compile the model")
    # augmentation
    p_landmark_mask: float = option(0.8, "probability of masking the eyes or the mouth (ellipse filled with the "
                                         "image mean)", between=(0.0, 1.0))
    p_colour: float = option(0.8, "probability of colour jitter (0.4, 0.4, 0.4, 0.2) on the positives",
                             between=(0.0, 1.0))
    p_colour_first: float = option(0.8, "probability of colour jitter on the first views (anchors, hard "
                                        "negatives); the official code: 1", between=(0.0, 1.0))
    p_blur: float = option(0.5, "probability of Gaussian blur", between=(0.0, 1.0))
    blur_kernel: int = option(0, "Gaussian blur kernel side (odd; the official code: 3); 0 = ~10% of the image",
                              between=(0, None))
    p_gray: float = option(0.2, "probability of grayscale", between=(0.0, 1.0))
    # run
    seed: int = option(0, "random seed")
    device: str = option("auto", "auto | cpu | cuda", choices=("auto", "cpu", "cuda"))
    workers: int = option(4, "data loader processes per rank (0 = in the main process)", between=(0, None))
    shuffle_factor: int = option(4, "the shuffle buffer holds this many times a step's anchors (clips); a step "
                                    "draws its anchors from it without replacement", between=(1, None))
    interleave_shards: int = option(16, "shards read side by side into the shuffle buffer", between=(1, None))
    log_every: int = option(1, "steps between log lines", between=(1, None))
    ckpt_minutes: float = option(10.0, "minutes between checkpoints of the last state", between=(0.0, None))
    keep_every: int = option(5, "epochs between the kept checkpoints checkpoints/epoch-NNNN.pt (the paper's 5; "
                                "0 = none)", between=(0, None))
    keep_top1: float = option(0.6, "keep an epoch checkpoint only once that epoch's mean instance top-1 reaches "
                                   "this (the paper's 60%; 0 = always, e.g. for a learning curve)",
                              between=(0.0, 1.0))
    ckpt_every: int = option(0, "also checkpoint the last state every this many steps (0 = by time only)",
                             between=(0, None))
    dist_timeout_min: float = option(10.0, "minutes a rank waits for the others before the run stops",
                                     between=(0.1, None))
    resume: str = option("auto", "auto (continue RUN/checkpoints/last.pt when present, refused when it was made "
                                 "with other settings) | force (continue it anyway) | never (start over) | "
                                 "<checkpoint>")
    logger: str = option("jsonl", "jsonl (RUN/log.jsonl, always written) | tensorboard (also RUN/tensorboard/; "
                                  "needs the tensorboard package: pip install -e '.[tensorboard]')",
                         choices=("jsonl", "tensorboard"))
    max_bad_steps: int = option(5, "stop after this many consecutive non-finite losses", between=(1, None))
    # online monitor
    monitor: str = option("", "folder of labelled expression faces (<class>/*.jpg, e.g. FER2013's train/): the "
                              "frozen backbone's kNN accuracy on it every monitor_every steps; "
                              "checkpoints/best.pt keeps the best")
    monitor_identity: str = option("", "folder of people (<name>/*.jpg, e.g. LFW): FR-KNN every monitor_every "
                                       "steps (lower = less identity)")
    monitor_every: int = option(500, "steps between monitor evaluations (also at the start and the end)",
                                between=(1, None))
    monitor_max_images: int = option(2000, "images sampled from each monitor set (class-balanced)", between=(1, None))
    monitor_cache: str = option(".cache/monitor", "where the monitor sets' aligned faces are cached")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        from sslfer.config import ConfigError

        raise ConfigError(f"preset {name!r} not found; presets: {', '.join(preset_names())}")
    return path
