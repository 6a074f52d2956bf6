"""Rendered WhatsUp-like scenes: two named objects in a known relation — left, right, on or
under — on a varied background, sometimes with a distractor, with ground-truth boxes. The built-in model organism
(``visfocus.organism``) is trained on ``scenes_train`` and reported on ``scenes_dev`` / ``scenes_test``.

The subject is a small coloured thing and the reference a large neutral one (a box or a shelf), as in WhatsUp's
controlled images; 30 % of scenes add a second small thing, so the question's words are needed to know which one is
meant. The *training* split is deliberately imbalanced (left/right 49.5 % each, on/under 0.5 % each: rare, as the
AdaptVis paper reports for LLaVA's training data); dev and test are balanced, so a model trained on it has familiar
and unfamiliar relations. ``scenes_train_v1`` is the first organism's training mix (on/under 4 % each).
Every split is generated from its own seed, so splits never share a scene generator state; everything is
deterministic given (split, seed)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from visfocus.benchmarks.base import Record, register_task
from visfocus.benchmarks.scoring import OptionTask

RELATIONS = ("left", "right", "on", "under")
QUESTION = "Where is the {subject} in relation to the {reference}? Answer with left, right, on or under."
# Small things (the subject, and the distractor) are saturated colours; the reference is a large neutral-coloured
# object, as in WhatsUp's controlled images (a mug left of / on / under a table).
COLOURS = {"red": (215, 35, 35), "green": (35, 160, 55), "blue": (40, 75, 215), "yellow": (240, 200, 20),
           "purple": (135, 55, 175), "orange": (245, 125, 15)}
SHAPES = ("square", "circle", "triangle")
REFERENCE_COLOURS = {"brown": (125, 80, 40), "gray": (115, 115, 115), "black": (25, 25, 25)}
REFERENCE_SHAPES = ("box", "shelf")  # box: a large square; shelf: a wide flat bar
IMAGE_SIZE = 192  # square images: 6 x 6 = 36 image tokens for Qwen3-VL (patch 16, merge 2)
# Relation mix of each split (weights over RELATIONS) and its default size.
# The training split gives on/under 0.5 % each (60 scenes each): rare enough that a model trained on it is unsure of
# them, as the AdaptVis paper finds for LLaVA. ``train_v1`` is the first organism's mix (4 % each), kept so that
# ``visfocus organism train --version v1`` still rebuilds it: the same seed offset, so the same scene generator.
SPLITS = {"train": ((0.495, 0.495, 0.005, 0.005), 12000, 1000),
          "dev": ((0.25, 0.25, 0.25, 0.25), 400, 2000),
          "test": ((0.25, 0.25, 0.25, 0.25), 800, 3000),
          "train_v1": ((0.46, 0.46, 0.04, 0.04), 12000, 1000)}  # (mix, n_records, seed offset)

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    box: Box

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    subject: SceneObject  # the object asked about
    reference: SceneObject
    relation: str  # where the subject is relative to the reference
    background: tuple[int, int, int]
    floor: tuple[int, int, int, int] | None  # (y, r, g, b): a band from y to the bottom, or None
    distractor: SceneObject | None


def _overlap(a: Box, b: Box, margin: int = 0) -> bool:
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


def _size(rng: random.Random, shape: str) -> tuple[int, int]:
    """(width, height): small things 20-32 px; a box 36-52 px; a shelf 56-80 x 12-18 px."""
    if shape == "box":
        side = rng.randint(36, 52)
        return side, side
    if shape == "shelf":
        return rng.randint(56, 80), rng.randint(12, 18)
    side = rng.randint(20, 32)
    return side, side


def place(rng: random.Random, relation: str, subject_size: tuple[int, int],
          reference_size: tuple[int, int]) -> tuple[Box, Box] | None:
    """Boxes for subject and reference in ``relation`` (one attempt; None when it does not fit).

    left/right: apart by 8-60 px horizontally, vertical centres within 10 px. on: the subject rests on the
    reference's top edge (0-2 px gap), its centre over the reference. under: the subject is just below the
    reference's bottom edge (0-4 px gap), its centre under the reference."""
    (sw, sh), (rw, rh) = subject_size, reference_size
    margin = 6
    if relation in ("left", "right"):
        gap = rng.randint(8, 60)
        total = sw + gap + rw
        if total > IMAGE_SIZE - 2 * margin:
            return None
        x0 = rng.randint(margin, IMAGE_SIZE - margin - total)
        cy = rng.randint(margin + max(sh, rh) // 2 + 10, IMAGE_SIZE - margin - max(sh, rh) // 2 - 10)
        scy, rcy = cy + rng.randint(-5, 5), cy + rng.randint(-5, 5)
        first, second = ((sw, sh, scy), (rw, rh, rcy)) if relation == "left" else ((rw, rh, rcy), (sw, sh, scy))
        a = (x0, first[2] - first[1] // 2, x0 + first[0], first[2] - first[1] // 2 + first[1])
        bx = x0 + first[0] + gap
        b = (bx, second[2] - second[1] // 2, bx + second[0], second[2] - second[1] // 2 + second[1])
        return (a, b) if relation == "left" else (b, a)
    gap = rng.randint(0, 2) if relation == "on" else rng.randint(0, 4)
    total = sh + gap + rh
    if total > IMAGE_SIZE - 2 * margin or max(sw, rw) > IMAGE_SIZE - 2 * margin:
        return None
    rx0 = rng.randint(margin, IMAGE_SIZE - margin - rw)
    scx = rx0 + rw // 2 + rng.randint(-max(0, (rw - sw) // 2), max(0, (rw - sw) // 2))
    sx0 = min(max(margin, scx - sw // 2), IMAGE_SIZE - margin - sw)
    top = rng.randint(margin, IMAGE_SIZE - margin - total)
    if relation == "on":
        subject = (sx0, top, sx0 + sw, top + sh)
        reference = (rx0, top + sh + gap, rx0 + rw, top + sh + gap + rh)
    else:
        reference = (rx0, top, rx0 + rw, top + rh)
        subject = (sx0, top + rh + gap, sx0 + sw, top + rh + gap + sh)
    return subject, reference


def make_scene(rng: random.Random, relation: str) -> Scene:
    """A small coloured subject placed in ``relation`` to a large neutral reference; a light background, half the time
    a floor band, and with probability 0.3 a distractor: a second small thing of another colour (then only the
    question's colour word tells which small thing is meant)."""
    colours = rng.sample(sorted(COLOURS), 2)
    shapes = [rng.choice(SHAPES), rng.choice(SHAPES)]
    reference_name = (rng.choice(sorted(REFERENCE_COLOURS)), rng.choice(REFERENCE_SHAPES))
    while True:
        boxes = place(rng, relation, _size(rng, shapes[0]), _size(rng, reference_name[1]))
        if boxes is not None:
            break
    subject = SceneObject(colours[0], shapes[0], boxes[0])
    reference = SceneObject(reference_name[0], reference_name[1], boxes[1])
    background = tuple(rng.randint(185, 250) for _ in range(3))
    floor = (rng.randint(IMAGE_SIZE // 2, IMAGE_SIZE - 20), *(rng.randint(150, 235) for _ in range(3))) \
        if rng.random() < 0.5 else None
    distractor = None
    if rng.random() < 0.3:
        for _ in range(20):
            w, h = _size(rng, shapes[1])
            x0, y0 = rng.randint(2, IMAGE_SIZE - w - 2), rng.randint(2, IMAGE_SIZE - h - 2)
            box = (x0, y0, x0 + w, y0 + h)
            if not any(_overlap(box, other, margin=10) for other in boxes):
                distractor = SceneObject(colours[1], shapes[1], box)
                break
    return Scene(subject, reference, relation, background, floor, distractor)


def split_scenes(split: str, n: int, seed: int) -> list[Scene]:
    """``n`` scenes of ``split`` with its relation mix (exact counts, shuffled), from one seeded generator."""
    mix = SPLITS[split][0]
    rng = random.Random(seed * 100_003 + SPLITS[split][2])
    counts = [int(round(weight * n)) for weight in mix]
    counts[0] += n - sum(counts)
    relations = [relation for relation, count in zip(RELATIONS, counts) for _ in range(count)]
    rng.shuffle(relations)
    return [make_scene(rng, relation) for relation in relations]


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    x0, y0, x1, y1 = obj.box
    colour = COLOURS.get(obj.colour) or REFERENCE_COLOURS[obj.colour]
    if obj.shape in ("square", "box", "shelf"):
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)
    elif obj.shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=colour)
    else:
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=colour)


def render(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), scene.background)
    draw = ImageDraw.Draw(image)
    if scene.floor is not None:
        y, *rgb = scene.floor
        draw.rectangle((0, y, IMAGE_SIZE - 1, IMAGE_SIZE - 1), fill=tuple(rgb))
    for obj in (scene.distractor, scene.reference, scene.subject):
        if obj is not None:
            _draw(draw, obj)
    return image


def scene_record(split: str, index: int, scene: Scene) -> Record:
    boxes = tuple({"label": obj.name, "xyxy": obj.box, "normalized": False}
                  for obj in (scene.subject, scene.reference, scene.distractor) if obj is not None)
    meta = {"subject": scene.subject.name, "reference": scene.reference.name,
            "distractor": scene.distractor.name if scene.distractor else None}
    prefix = split.removesuffix("_v1")  # scenes_train_v1's records are named as the first organism saw them
    return Record(id=f"{prefix}-{index}", question=QUESTION.format(subject=scene.subject.name,
                                                                  reference=scene.reference.name),
                  gold=scene.relation, image=render(scene), options=RELATIONS, relation=scene.relation, boxes=boxes,
                  meta=meta)


class ScenesTask(OptionTask):
    """One split of the rendered scenes; ``n_records`` and ``seed`` default to the split's standard size and 0."""

    reads_data = False

    def __init__(self, name: str, split: str, n_records: int | None = None, seed: int = 0, **kwargs) -> None:
        super().__init__(name, **kwargs)
        self.split, self.seed = split, seed
        self.n_records = SPLITS[split][1] if n_records is None else n_records

    def load_records(self) -> list[Record]:
        scenes = split_scenes(self.split, self.n_records, self.seed)
        return [scene_record(self.split, index, scene) for index, scene in enumerate(scenes)]

    def split_info(self) -> dict:
        mix = dict(zip(RELATIONS, SPLITS[self.split][0]))
        return {"split": self.split, "n_records": self.n_records, "seed": self.seed, "relation_mix": mix}


for _split in SPLITS:
    register_task(f"scenes_{_split}", lambda name, _split=_split, **kw: ScenesTask(name, _split, **kw))
