"""`make eval-*` options."""
from __future__ import annotations

from dataclasses import dataclass

from preprocess.config import option


@dataclass
class EvalConfig:
    protocol: str = option("both", "linear (frozen backbone, head on cached features) | finetune (whole network) "
                                   "| both")
    task: str = option("expr", "AffectNet: expr (classes) | va (valence/arousal, CCC loss) | both")
    classes: int = option(8, "AffectNet classes: 8 (0-7) or 7 (without contempt); labels 8-10 are dropped")
    epochs: int = option(20, "epochs of head training / fine-tuning (paper: 20 for AffectNet)")
    batch_size: int = option(64, "batch size")
    lr: float = option(1e-4, "Adam learning rate (cosine schedule per iteration)")
    weight_decay: float = option(5e-4, "Adam weight decay")
    image_size: int = option(112, "model input side (faces aligned at 128, centre crop)")
    max_images: int = option(0, "use at most this many images per split (0 = all), drawn with the seed")
    val_fraction: float = option(0.1, "share of the training split carved out for model selection")
    test_fraction: float = option(0.1, "share carved out as the test split when the dataset has none")
    seed: int = option(0, "random seed (splits, heads, Grad-CAM images)")
    probe_seeds: int = option(1, "train each head (linear and fine-tune) with this many seeds (seed, seed+1, ...: "
                                 "initialisation, dropout, batch order; the splits stay those of seed) and "
                                 "report the mean, the standard deviation and every seed's test scores")
    device: str = option("auto", "auto | cpu | cuda")
    workers: int = option(2, "processes for face alignment")
    arch: str = option("resnet50", "architecture for CKPT=random or imagenet (checkpoints carry their own)")
    knn_min_images: int = option(20, "LFW FR-KNN: people with at least this many images")
    knn_train_fraction: float = option(0.7, "LFW FR-KNN: share of each person's images in the gallery")
    gradcam_per_class: int = option(2, "Grad-CAM images per class in the saliency grid (0 = none)")
    cache_dir: str = option(".cache/eval", "aligned-face and feature caches")
    align: str = option("landmarks", "landmarks (the pretraining alignment: mediapipe landmarks or the dataset's, "
                                     "with fallbacks) | none (whole images resized, usual for pre-cropped sets "
                                     "such as FER2013)")
