"""`make eval-*` options."""
from __future__ import annotations

from dataclasses import dataclass

from sslfer.config import option


@dataclass
class EvalConfig:
    protocol: str = option("both", "linear (frozen backbone, head on cached features) | finetune (whole network) "
                                   "| both", choices=("linear", "finetune", "both"))
    task: str = option("expr", "AffectNet: expr (classes) | va (valence/arousal, CCC loss) | both",
                       choices=("expr", "va", "both"))
    classes: int = option(8, "AffectNet classes: 8 (0-7) or 7 (without contempt); labels 8-10 are dropped",
                          choices=(7, 8))
    epochs: int = option(20, "epochs of head training / fine-tuning (paper: 20 for AffectNet)", between=(1, None))
    batch_size: int = option(64, "batch size", between=(1, None))
    lr: float = option(1e-4, "Adam learning rate (cosine schedule per iteration)", between=(0.0, None))
    weight_decay: float = option(5e-4, "Adam weight decay", between=(0.0, None))
    image_size: int = option(112, "model input side (faces aligned at 128, centre crop)", between=(16, None))
    max_images: int = option(0, "use at most this many images per split (0 = all), drawn with the seed",
                             between=(0, None))
    val_fraction: float = option(0.1, "share of the training split carved out for model selection", between=(0.0, 0.9))
    test_fraction: float = option(0.1, "share carved out as the test split when the dataset has none",
                                  between=(0.0, 0.9))
    seed: int = option(0, "random seed (splits, heads, Grad-CAM images)")
    probe_seeds: int = option(1, "train each head (linear and fine-tune) with this many seeds (seed, seed+1, ...: "
                                 "initialisation, dropout, batch order; the splits stay those of seed) and "
                                 "report the mean, the standard deviation and every seed's test scores",
                              between=(1, None))
    device: str = option("auto", "auto | cpu | cuda", choices=("auto", "cpu", "cuda"))
    workers: int = option(2, "processes for face alignment", between=(0, None))
    arch: str = option("resnet50", "architecture for CKPT=random or imagenet (checkpoints carry their own)",
                       choices=("resnet50", "resnet18", "resnet34", "resnet101"))
    knn_min_images: int = option(20, "LFW FR-KNN: people with at least this many images", between=(1, None))
    knn_train_fraction: float = option(0.7, "LFW FR-KNN: share of each person's images in the gallery",
                                       between=(0.05, 0.95))
    gradcam_per_class: int = option(2, "Grad-CAM images per class in the saliency grid (0 = none)",
                                    between=(0, None))
    gradcam_layer: str = option("auto", "ResNet stage Grad-CAM is taken at: auto (the deepest whose map is at least "
                                        "7x7 at image_size: layer3 at 112 px, layer4 at 224) | layer1 | layer2 | "
                                        "layer3 | layer4", choices=("auto", "layer1", "layer2", "layer3", "layer4"))
    cache_dir: str = option(".cache/eval", "aligned-face and feature caches")
    align: str = option("landmarks", "landmarks (the pretraining alignment: mediapipe landmarks or the dataset's, "
                                     "with fallbacks) | none (whole images resized, usual for pre-cropped sets "
                                     "such as FER2013)", choices=("landmarks", "none"))


@dataclass
class EmbedConfig:
    image_size: int = option(112, "model input side (faces aligned at 128, centre crop), as in pretraining",
                             between=(16, None))
    batch_size: int = option(256, "faces per forward pass (the embeddings do not depend on it)", between=(1, None))
    chunk: int = option(4096, "images aligned and embedded per chunk (memory stays bounded whatever the input's "
                              "size: ~50 KB of aligned face per image)", between=(1, None))
    workers: int = option(2, "processes aligning images (mediapipe)", between=(0, None))
    device: str = option("auto", "auto | cpu | cuda", choices=("auto", "cpu", "cuda"))
    arch: str = option("resnet50", "architecture for CKPT=random or imagenet (checkpoints carry their own)",
                       choices=("resnet50", "resnet18", "resnet34", "resnet101"))
    seed: int = option(0, "seed of CKPT=random")
    projection: bool = option(False, "also the projector's output (a training checkpoint of the simclr family: "
                                     "checkpoints/last.pt, best.pt, epoch-*.pt)")
    sample_fps: float = option(25 / 6, "videos: frames sampled per second, as make shards samples them (accepts "
                                       "25/6)", between=(0.001, None))
    max_side: int = option(640, "videos: decoded frames are scaled down so the longer side is at most this",
                           between=(64, None))
    min_face_px: float = option(16.0, "videos: frames whose face has an inter-ocular distance below this are "
                                      "dropped (listed)", between=(0.0, None))
    aligned: bool = option(False, "images are already aligned 128x128 faces of this project (no detection)")
    plots: bool = option(True, "PNG figures: the 2-D map of a labelled set (<class>/*.jpg: by class and, for "
                               "<Name>_NNNN.jpg files, by person) and each video's embedding over time")
