"""Where the image tokens of a prompt are and what they show: per batch row, per image, one or more token grids
("views": the whole image for Qwen and LLaVA-1.5; the base view and the high-resolution tiles for LLaVA-NeXT)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from visfocus.errors import VisfocusError


@dataclass
class ImageView:
    """A (rows × cols) grid of image tokens, row-major, covering ``region`` (x0, y0, x1, y1) of the original image.

    columns: (rows*cols,) positions of these tokens in the row's sequence, counted from its first real (non-pad)
    token. Tokens that show no pixel (LLaVA-NeXT's newline tokens) belong to no view.
    """

    name: str
    columns: np.ndarray
    rows: int
    cols: int
    region: tuple[float, float, float, float]
    image_size: tuple[int, int]  # (width, height) of the original image

    def boxes(self) -> np.ndarray:
        """(rows*cols, 4) pixel box (x0, y0, x1, y1) each token covers in the original image, clipped to it."""
        x0, y0, x1, y1 = self.region
        xs = np.linspace(x0, x1, self.cols + 1)  # (cols+1,)
        ys = np.linspace(y0, y1, self.rows + 1)  # (rows+1,)
        r, c = np.meshgrid(np.arange(self.rows), np.arange(self.cols), indexing="ij")  # (rows, cols)
        out = np.stack([xs[c], ys[r], xs[c + 1], ys[r + 1]], axis=-1).reshape(-1, 4)  # (rows*cols, 4)
        w, h = self.image_size
        return np.clip(out, 0, [w, h, w, h])


@dataclass
class RowLayout:
    """One batch row: its image-token positions (from the first real token) and the views of each image.
    ``no_grid``: why the image tokens have no spatial grid (then every image has no view); None where they do."""

    image_positions: np.ndarray  # (n_image_tokens,)
    images: list[list[ImageView]] = field(default_factory=list)
    no_grid: str | None = None

    def view(self, image: int = 0, view: int = 0) -> ImageView:
        """View ``view`` of image ``image``; a ``VisfocusError`` naming ``no_grid`` where there is no grid."""
        require_grid(self.no_grid)
        return self.images[image][view]


def require_grid(no_grid: str | None) -> None:
    """Raise the one clear error of a layout (or trace file) whose image tokens have no spatial grid."""
    if no_grid:
        raise VisfocusError(no_grid)


def contiguous_segments(positions: np.ndarray) -> list[np.ndarray]:
    """Split sorted positions into runs of consecutive integers (one run per image)."""
    if len(positions) == 0:
        return []
    breaks = np.nonzero(np.diff(positions) != 1)[0] + 1
    return np.split(positions, breaks)
