"""What a positive-pair piece works on: views (a clip sample, one of its frames, maybe one of that frame's stored
FaceSwap composites) and, after the batch's images are read, the images themselves."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sslfer.shards.schema import ClipSample


@dataclass
class View:
    cid: int
    clip: ClipSample
    frame: int
    swap: int = -1  # which of the frame's FaceSwap composites (-1: the face itself)


class PositivePair:
    """One way of making an anchor's positive. The batch builder starts every positive as the anchor's own frame
    and hands it to each active piece in registry order: `choose` may change which frame or stored image it is
    (TimeAug, FaceSwap); once the step's images are read, `edit_images` may change the positives' pixels (CutMix).
    Count what you do in `stats` (a key the batch builder declares in BATCH_COUNTS is summed and logged)."""

    def __init__(self, cfg, builder):
        self.cfg, self.builder = cfg, builder

    def choose(self, anchor: View, positive: View, rng: np.random.Generator, stats: dict,
               bounds: tuple[int, int] | None = None) -> View:
        """The positive after this piece. `bounds` (frame indices, inclusive): stay inside them (a hard
        negative's positive must stay >= T2 from the anchor's pair)."""
        return positive

    def edit_images(self, images: list[np.ndarray], anchors: list[View], rng: np.random.Generator,
                    stats: dict) -> None:
        """images: [first views; positives] as HxWx3 uint8, the first len(anchors) the first views; edit the
        positives in place."""
