"""Analyses of recorded attention traces and run outputs (AdaptVis paper §4.1, §5.1, App. E; docs/methods.md §10.4).

Pure functions over the plain data a run leaves behind — no file I/O, no plotting:

- ``attention``: head means, image/text/special shares per layer (split by correctness), entropy and skewness of
  the image-attention distribution, token-grid maps, and the per-layer difference between two runs.
- ``boxes``: object-box indicators on a view's token grid, the cosine overlap of attention with them, its AUROC for
  answer correctness per layer, and the pointing game.
- ``calibration``: reliability bins and expected calibration error, confidence AUROC, confidence per relation.
- ``study``: the numbers of ``visfocus study`` — confidence by relation and rarity, box shares by layer for right vs
  wrong answers, what one α changes, AdaptVis's branches and smoothing by confidence.

Inputs follow ``visfocus.tracefile.load_traces`` (``traces``: {sample id: trace dict}), the samples log (``rows``:
{sample id: row with "correct", "confidence", "relation"}) and ``Record.boxes`` (``boxes``: {sample id: [box]}).
"""

from visfocus.analysis import attention, boxes, calibration, study

__all__ = ["attention", "boxes", "calibration", "study"]
