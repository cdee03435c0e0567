"""The paper's downstream protocols: a three-layer head on frozen, cached features (linear) or on the whole
network (fine-tune); Balanced Softmax for classes, CCC loss for valence/arousal; best epoch by validation."""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from eval import metrics as M
from sslfer.augment import eval_transform, normalize, resized_crop_flip
from sslfer.progress import progress


def head(width: int, outputs: int) -> nn.Sequential:
    """feat -> 1024 -> 512 -> outputs, Dropout(0.5) before each Linear, ReLU between (paper §4.1)."""
    return nn.Sequential(nn.Dropout(0.5), nn.Linear(width, 1024), nn.ReLU(inplace=True),
                         nn.Dropout(0.5), nn.Linear(1024, 512), nn.ReLU(inplace=True),
                         nn.Dropout(0.5), nn.Linear(512, outputs))


@torch.no_grad()
def extract_features(backbone: nn.Module, faces, image_size: int, device: str, batch: int = 256,
                     desc: str = "features", out_path=None) -> np.ndarray:
    """Backbone features of aligned uint8 faces [N,128,128,3] (an array or anything indexable by an index array
    of rows; resize, centre crop, normalise). With out_path: written batch by batch into that .npy and returned
    memory-mapped (never whole in RAM)."""
    from sslfer.files import ArrayWriter

    backbone = backbone.to(device).eval()
    out, writer = [], None
    try:
        for i in progress(range(0, len(faces), batch), desc=desc, unit="batch", dynamic_ncols=True, leave=False):
            rows = np.arange(i, min(i + batch, len(faces)))
            x = torch.from_numpy(np.ascontiguousarray(faces[rows])).to(device).permute(0, 3, 1, 2)
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                f = backbone(eval_transform(x, image_size)).float().cpu().numpy()
            if out_path is None:
                out.append(f)
                continue
            if writer is None:
                writer = ArrayWriter(out_path, (len(faces), f.shape[1]), np.float32)
            writer.array.write(i, f)
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    if writer is not None:
        return writer.finish()
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


@dataclass
class Result:
    metrics: dict
    curves: list = field(default_factory=list)  # per epoch: train loss, val score
    predictions: np.ndarray | None = None       # test predictions (classes) or [N, 2] (va)
    model: nn.Module | None = None              # the selected head (linear) or network (fine-tune)


def _scores(task: str, out: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    if task == "expr":
        pred = out.argmax(1)
        return {"f1": M.macro_f1(y, pred, n_classes), "acc": M.accuracy(y, pred),
                "per_class_f1": M.per_class_f1(y, pred, n_classes).round(4).tolist(), "n": int(len(y))}
    return {"v_ccc": M.ccc(out[:, 0], y[:, 0]), "v_rmse": M.rmse(out[:, 0], y[:, 0]),
            "a_ccc": M.ccc(out[:, 1], y[:, 1]), "a_rmse": M.rmse(out[:, 1], y[:, 1]), "n": int(len(y))}


def _selection_score(task: str, s: dict) -> float:
    return s["f1"] if task == "expr" else (s["v_ccc"] + s["a_ccc"]) / 2


def train_head(task: str, inputs: dict, targets: dict, n_classes: int, cfg, device: str,
               forward, params, make_batch, desc: str, seed: int) -> Result:
    """The shared training loop: Adam, cosine per iteration, Balanced Softmax (expr) or CCC loss (va), best
    epoch by validation; `forward(batch_inputs, train)` maps a batch to outputs. The caller has seeded torch
    with `seed` before building the head (dropout draws follow from it)."""
    rng = np.random.default_rng(seed)
    n_train = len(targets["train"])
    steps = max(1, math.ceil(n_train / cfg.batch_size)) * cfg.epochs
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    counts = torch.from_numpy(np.bincount(targets["train"], minlength=n_classes)) if task == "expr" else None
    best, curves = None, []

    def predict(split):
        outs = []
        for i in range(0, len(targets[split]), 256):
            with torch.no_grad():
                outs.append(forward(make_batch(inputs[split], np.arange(i, min(i + 256, len(targets[split])))),
                                    False).float().cpu())
        return torch.cat(outs).numpy()

    for epoch in progress(range(cfg.epochs), desc=desc, unit="epoch", dynamic_ncols=True, leave=False):
        order = rng.permutation(n_train)
        total, seen = 0.0, 0
        for i in range(0, n_train, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            if len(idx) < 2:
                continue
            out = forward(make_batch(inputs["train"], idx), True).float()
            y = torch.from_numpy(targets["train"][idx]).to(device)
            loss = M.balanced_softmax_loss(out, y, counts) if task == "expr" else M.ccc_loss(out, y.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        val = _scores(task, predict("val"), targets["val"], n_classes)
        score = _selection_score(task, val)
        curves.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1), "val_score": score})
        if best is None or score > best[0]:
            best = (score, epoch + 1, copy.deepcopy(forward.module.state_dict()))
    forward.module.load_state_dict(best[2])
    test_out = predict("test")
    metrics = {"test": _scores(task, test_out, targets["test"], n_classes), "best_epoch": best[1],
               "val_score": best[0]}
    return Result(metrics, curves, test_out.argmax(1) if task == "expr" else test_out, forward.module)


class _Forward:
    """Callable (batch, train) -> outputs around a module; keeps the module reachable for checkpointing."""

    def __init__(self, module: nn.Module, fn):
        self.module, self.fn = module, fn

    def __call__(self, batch, train: bool):
        self.module.train(train)
        with torch.set_grad_enabled(train):
            return self.fn(batch, train)


def linear_probe(task: str, features: dict, targets: dict, n_classes: int, cfg, device: str,
                 seed: int | None = None) -> Result:
    """Head on frozen, cached features. Everything random (head initialisation, dropout, batch order) follows
    from `seed` (default cfg.seed), whatever ran before."""
    seed = cfg.seed if seed is None else seed
    torch.manual_seed(seed)
    width = features["train"][np.arange(1)].shape[1]
    net = head(width, n_classes if task == "expr" else 2).to(device)
    t0 = time.perf_counter()
    r = train_head(task, features, targets, n_classes, cfg, device,
                   _Forward(net, lambda b, train: net(b.to(device))), net.parameters(),
                   lambda x, idx: torch.from_numpy(np.ascontiguousarray(x[idx])).float(), f"linear {task}", seed)
    r.metrics["seconds"] = round(time.perf_counter() - t0, 2)
    return r


def fine_tune(task: str, backbone: nn.Module, width: int, faces: dict, targets: dict, n_classes: int, cfg,
              device: str, seed: int | None = None) -> Result:
    """Backbone + head, trained end to end on the aligned faces (random crop and flip for training); seeded
    like linear_probe."""
    seed = cfg.seed if seed is None else seed
    torch.manual_seed(seed)
    net = nn.Sequential(copy.deepcopy(backbone), head(width, n_classes if task == "expr" else 2)).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)

    def run(batch, train):
        x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2)
        if train:  # resize, random crop and flip, as in pretraining; no other augmentation
            no_boxes = torch.zeros(len(x), 2, 4, device=device)
            x = normalize(resized_crop_flip(x.float() / 255, no_boxes, cfg.image_size, gen)[0])
        else:
            x = eval_transform(x, cfg.image_size)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            return net(x)

    t0 = time.perf_counter()
    res = train_head(task, faces, targets, n_classes, cfg, device, _Forward(net, run), net.parameters(),
                     lambda x, idx: x[idx], f"fine-tune {task}", seed)
    res.metrics["seconds"] = round(time.perf_counter() - t0, 2)
    return res


def over_seeds(run, seeds: list[int]) -> Result:
    """`run(seed) -> Result` for every seed: the first seed's Result (curves, predictions, model) with the test
    scores replaced by their mean over the seeds, plus `test_std`, `test_per_seed` and `seeds`."""
    results = [run(s) for s in seeds]
    first = results[0]
    if len(results) == 1:
        return first
    tests = [r.metrics["test"] for r in results]
    numeric = [k for k, v in tests[0].items() if isinstance(v, float)]
    first.metrics["test_per_seed"] = [{k: t[k] for k in numeric} for t in tests]
    first.metrics["test"] = {**tests[0], **{k: float(np.mean([t[k] for t in tests])) for k in numeric}}
    first.metrics["test_std"] = {k: float(np.std([t[k] for t in tests])) for k in numeric}
    first.metrics["seeds"] = list(seeds)
    return first
