"""A generated spatial task that needs no data: two coloured shapes on a plain background, one clearly left of, right
of, above or below the other. Seeded and deterministic; for smoke tests and quick checks of the whole pipeline."""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from visfocus.benchmarks.base import Record, register_task
from visfocus.benchmarks.scoring import OptionTask

RELATIONS = ("left", "right", "above", "below")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
           "purple": (140, 60, 180), "orange": (245, 130, 20)}
SHAPES = ("square", "circle", "triangle")
IMAGE_SIZE = (224, 160)  # (width, height)
BACKGROUND = (235, 235, 235)
MIN_GAP = 16  # pixels between the two boxes along the relation's axis
QUESTION = "Where is the {subject} in relation to the {reference}? Answer with left, right, above or below."

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels


@dataclass(frozen=True)
class Scene:
    subject: str  # e.g. "red square": the object asked about
    reference: str
    relation: str  # where the subject is relative to the reference
    subject_box: Box
    reference_box: Box


def relation_holds(relation: str, subject: Box, reference: Box, min_gap: int = MIN_GAP) -> bool:
    """True when ``subject`` is clearly ``relation`` of ``reference``: apart by ``min_gap`` pixels on that axis and
    centred within half the smaller size on the other axis (so no second relation also fits)."""
    horizontal = relation in ("left", "right")
    first, second = (subject, reference) if relation in ("left", "above") else (reference, subject)
    axis = 0 if horizontal else 1
    gap = second[axis] - first[axis + 2]  # start of the later box minus end of the earlier one
    cross = 1 - axis
    centre_offset = abs((subject[cross] + subject[cross + 2]) - (reference[cross] + reference[cross + 2])) / 2
    smaller = min(subject[cross + 2] - subject[cross], reference[cross + 2] - reference[cross])
    return gap >= min_gap and centre_offset <= smaller / 2


def _random_box(rng: random.Random, size: int) -> Box:
    width, height = IMAGE_SIZE
    x0, y0 = rng.randint(4, width - size - 4), rng.randint(4, height - size - 4)
    return (x0, y0, x0 + size, y0 + size)


def make_scene(rng: random.Random, relation: str) -> Scene:
    """Two objects with distinct colours and shapes, placed (by rejection sampling) so ``relation`` is unambiguous."""
    colours, shapes = rng.sample(sorted(COLOURS), 2), rng.sample(SHAPES, 2)
    subject, reference = f"{colours[0]} {shapes[0]}", f"{colours[1]} {shapes[1]}"
    while True:
        subject_box, reference_box = _random_box(rng, rng.randint(28, 40)), _random_box(rng, rng.randint(28, 40))
        if relation_holds(relation, subject_box, reference_box):
            return Scene(subject, reference, relation, subject_box, reference_box)


def make_scenes(n: int, seed: int) -> list[Scene]:
    """``n`` scenes, the four relations in equal turns (shuffled), all drawn from one seeded generator."""
    rng = random.Random(seed)
    relations = [RELATIONS[i % len(RELATIONS)] for i in range(n)]
    rng.shuffle(relations)
    return [make_scene(rng, relation) for relation in relations]


def render(scene: Scene) -> Image.Image:
    image = Image.new("RGB", IMAGE_SIZE, BACKGROUND)
    draw = ImageDraw.Draw(image)
    for name, (x0, y0, x1, y1) in ((scene.subject, scene.subject_box), (scene.reference, scene.reference_box)):
        colour_name, shape = name.split(" ")
        colour = COLOURS[colour_name]
        if shape == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)
        elif shape == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=colour)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=colour)
    return image


def scene_record(index: int, scene: Scene) -> Record:
    boxes = ({"label": scene.subject, "xyxy": scene.subject_box, "normalized": False},
             {"label": scene.reference, "xyxy": scene.reference_box, "normalized": False})
    return Record(id=str(index), question=QUESTION.format(subject=scene.subject, reference=scene.reference),
                  gold=scene.relation, image=render(scene), options=RELATIONS, relation=scene.relation, boxes=boxes,
                  meta={"subject": scene.subject, "reference": scene.reference})


class SyntheticSpatialTask(OptionTask):
    """``n_records`` rendered scenes (default 64, seed 0); works without any data root."""

    reads_data = False

    def __init__(self, name: str, n_records: int = 64, seed: int = 0, **kwargs) -> None:
        super().__init__(name, **kwargs)
        self.n_records, self.seed = n_records, seed

    def load_records(self) -> list[Record]:
        return [scene_record(index, scene) for index, scene in enumerate(make_scenes(self.n_records, self.seed))]

    def split_info(self) -> dict:
        return {"n_records": self.n_records, "seed": self.seed}


register_task("synthetic_spatial", SyntheticSpatialTask)
