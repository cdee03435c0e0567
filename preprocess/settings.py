"""`make shards` options. Each option names the pipeline step whose cached output it changes."""
from __future__ import annotations

from dataclasses import dataclass

from preprocess.jobs import available_cpus
from sslfer.config import option

# Pipeline steps, in order. A step's cache key hashes its inputs and the options tagged with it.
STEPS = ("faces", "region", "faceswap", "pack")


@dataclass
class ShardsConfig:
    layout: str = option("auto", "input layout: auto | videos (<speaker>/<video>/<clip>.mp4) | frames "
                                 "(VoxCeleb1 unzippedIntervalFaces/data/<Name>/1.6/<ytid>/<clip>/*.jpg) | "
                                 "csv (a CSV file path,speaker[,video])", choices=("auto", "videos", "frames", "csv"))
    meta_csv: str = option("", "frames layout: vox1_meta.csv mapping names to speaker ids (default: looked "
                               "for in DATA and its parents; without it the folder name is the speaker)")
    frames_fps: float = option(25.0, "frames layout: frame rate of the frame numbers in the file names", "faces",
                               between=(0.001, None))
    sample_fps: float = option(25 / 6, "frames sampled per second of video (25/6 = VoxCeleb1's face-frame rate); "
                                       "accepts a fraction like 25/6", "faces", between=(0.001, None))
    max_side: int = option(640, "decoded frames are scaled down so the longer side is at most this", "faces",
                           between=(64, None))
    max_faces: int = option(4, "faces the landmark detector looks for per frame (the tracked one, else the "
                               "largest, is kept)", "faces", between=(1, None))
    min_face_px: float = option(16.0, "frames whose face has an inter-ocular distance below this many decoded "
                                      "pixels are dropped", "faces", between=(0.0, None))
    min_detection_confidence: float = option(0.5, "mediapipe face detection confidence threshold", "faces",
                                             between=(0.0, 1.0))
    face_size: int = option(128, "side of the aligned RGB face crop (the paper resizes to 128, crops 112)", "faces",
                            between=(32, None))
    region_size: int = option(64, "side of the square-padded eye and mouth crops", "faces", between=(8, None))
    jpeg_quality: int = option(95, "JPEG quality of stored faces, crops and composites", "faces", between=(1, 100))
    region_descriptor: str = option("resnet18", "MaskFN region descriptor: resnet18 (frozen ImageNet ResNet18, "
                                                "eyes||mouth = 1024-d) | landmarks (eye and mouth landmark "
                                                "geometry, needs no weights)", "region",
                                    choices=("resnet18", "landmarks"))
    region_weights: str = option("", "ResNet18 weights file; empty = torchvision's cache; 'random' = random "
                                     "init (tests only)", "region")
    region_batch_size: int = option(256, "crops per forward pass of the region encoder", between=(1, None))
    device: str = option("auto", "where region embeddings run: auto | cpu | cuda", choices=("auto", "cpu", "cuda"))
    faceswap: bool = option(True, "precompute FaceSwap composites", "faceswap")
    swap_seed: int = option(0, "seed of the donor choice", "faceswap")
    swap_tries: int = option(5, "donor frames tried per frame before the composite is skipped", "faceswap",
                             between=(1, None))
    sticky_donors: bool = option(True, "a clip keeps its FaceSwap donors from run to run while they stay in the "
                                       "corpus, so adding clips rewrites no existing shard (donors then depend on "
                                       "the order clips came in; the manifest's swap_donor records them); false: "
                                       "chosen from the current corpus alone, which changes the donors of "
                                       "~swap_tries existing clips per clip added")
    swaps_per_frame: int = option(2, "composites stored per frame, each with another of the best-fitting donors "
                                      "(the trainer picks one at random: a positive's identity varies across "
                                      "epochs)", "faceswap", between=(1, None))
    swap_max_misfit: float = option(0.08, "skip a donor whose landmarks differ from the face's by more than "
                                          "this RMS, in inter-ocular distances, after alignment", "faceswap",
                                    between=(0.0, None))
    swap_feather: float = option(0.08, "mask feathering (Gaussian sigma), in inter-ocular distances", "faceswap",
                                 between=(0.0, None))
    swap_dilate: float = option(0.2, "the mask is grown by this many inter-ocular distances before feathering, "
                                      "so mouth corners and brows come whole from the face", "faceswap",
                                between=(0.0, None))
    swap_colour_blur: float = option(0.6, "colour correction blur, in inter-ocular distances", "faceswap",
                                     between=(0.0, None))
    shard_max_mb: float = option(256.0, "a shard is closed once it holds this many MB", "pack", between=(0.0, None))
    pack_seed: int = option(0, "seed of the order clips are spread over shards", "pack")
    window_s: float = option(60.0, "a clip longer than this is stored as several samples of equal duration, each "
                                   "at most this long and at least half of it (room for TimeAug and HardNeg), "
                                   "keyed <clip key>_w<k>; bounds a sample's size and an anchor's read "
                                   "(0 = one sample per clip)", "pack", between=(0.0, None))
    workers: int = option(available_cpus(), "clips processed in parallel, each in its own worker process "
                                            "(default: the CPUs this process may use, SLURM's allocation "
                                            "included); 0 = in this process (debugging: no timeout)", between=(0, None))
    clip_timeout_s: float = option(1800.0, "a clip whose decoding and face steps take longer is rejected "
                                           "and the run goes on (0 = no limit)", between=(0.0, None))
    part: str = option("0/1", "process the deterministic part i of n of the corpus (i/n, 0-based) into "
                              "SHARDS/parts/i-of-n; `make shards-merge` joins the parts")
    max_clips: int = option(0, "process at most this many clips (0 = all)", between=(0, None))
    cache_dir: str = option("", "step cache folder (default SHARDS/.cache)")
