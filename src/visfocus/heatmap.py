"""``visfocus heatmap``: answer one question about one image with the attention trace on, and draw where the last
prompt row looked — the head-mean attention on the first image view's tokens (LLaVA-NeXT: the base view) at the
chosen layers (default: the middle layer, where grounding is; docs/methods.md §10.4, §12.12), over the original image,
in attention units. The title carries the question, the answer, its confidence and the decisions the method reports
(its declared extras, e.g. ``alpha_used``; ``visfocus list methods``).

    visfocus heatmap --model Qwen/Qwen3-VL-2B-Instruct --image kitchen.jpg --question "Where is the cup?" \\
        --method scaling_vis --method_args alpha=0.5 --layers 8,14,20 --out cup.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from visfocus.errors import VisfocusError
from visfocus.images import open_image
from visfocus.models.layout import require_grid


def parse_layers(text: str | None) -> list[int] | None:
    """``"8,14,20"`` → [8, 14, 20]; None or empty → None (the middle layer)."""
    if text is None or not text.strip():
        return None
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError as err:
        raise VisfocusError(f"--layers must be comma-separated layer indices such as 8,14,20, got {text!r}") from err


def check_layers(layers: list[int] | None, num_layers: int) -> list[int]:
    """The layers to draw (default: the middle one, L // 2); one clear error for any outside 0..L-1."""
    if layers is None:
        return [num_layers // 2]
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise VisfocusError(f"layer {', '.join(map(str, bad))} out of range: the model has {num_layers} layers "
                            f"(0–{num_layers - 1})")
    return layers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``visfocus heatmap``."""
    parser.add_argument("--model", required=True, help="Hub id or local path")
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--question", required=True)
    parser.add_argument("--method", help="a registered method (visfocus list methods); default: baseline")
    parser.add_argument("--method_args", help="KEY=VALUE,... for the method, e.g. alpha=0.5 (tuples: 1;2;3)")
    parser.add_argument("--layers", help="comma-separated decoder layers, e.g. 8,14,20 (default: the middle layer)")
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--smooth", action="store_true", help="bilinear interpolation between token cells")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="heatmap.png", help="figure file to write (default heatmap.png)")


def run(args: argparse.Namespace) -> int:
    """``visfocus heatmap --model M --image IMG --question Q [--method NAME --method_args k=v] [--layers 8,14]
    --out fig.png``: writes the figure and prints its path."""
    from visfocus.analysis.figures import layer_heatmaps_figure, save
    from visfocus.api import load
    from visfocus.interventions import method, parse_method_args
    from visfocus.listing import extra_items
    from visfocus.tracefile import sample_arrays

    image = open_image(args.image)  # the one loader (upright, RGB), checked before the model loads
    layers = parse_layers(args.layers)
    if args.method_args and not args.method:
        raise VisfocusError("--method_args given without --method")
    name = args.method or "baseline"  # the plain model, itself a registered method
    chosen = method(name, **parse_method_args(name, args.method_args or ""))
    vlm = load(args.model, dtype=args.dtype, device=args.device)
    layers = check_layers(layers, vlm.num_layers)
    require_grid(vlm.adapter.no_grid_reason)  # a heatmap needs the image tokens' pixel boxes
    answer = vlm.answer(image, args.question, chosen, max_new_tokens=args.max_new_tokens, trace=True)
    arrays = sample_arrays(answer.trace, answer.extras)
    views = json.loads(str(arrays["meta"]))["views"]
    if not views:
        raise VisfocusError(f"the model recorded no image view for {args.image}; nothing to draw")
    reported = "".join(f", {key} {value}" for key, value in extra_items(name, answer.extras))
    title = f"{args.question}\n→ {answer.text!r} (confidence {answer.confidence:.2f}{reported}; {name})"
    fig = layer_heatmaps_figure(image, arrays["attention"], views[0], layers, title=title, smooth=args.smooth)
    path = save(fig, Path(args.out))
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="visfocus heatmap",
                                     description="draw where the model looked, layer by layer, for one question")
    add_arguments(parser)
    return run(parser.parse_args(argv))
