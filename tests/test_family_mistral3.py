"""Mistral 3 (Pixtral + Mistral): one rows × cols grid of [IMG] tokens over the whole (stretched) image, each row
closed by [IMG_BREAK] and the last by [IMG_END], which belong to no view; the text-only prompt; the sharing split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import visfocus as vf
from visfocus.models.mistral3 import PixtralProcessorPil, token_grid
from visfocus.models.processor import load_processor
from visfocus.testing import make_image, tiny_model_dir

QUESTION = "Where is the cup?"
SIDE = 28  # px per [IMG] token: patch 14 × spatial merge 2


@pytest.fixture(scope="module")
def vlm():
    return vf.load(str(tiny_model_dir("mistral3")))


def _tokens(vlm, ids) -> list[str]:
    return vlm.processor.tokenizer.convert_ids_to_tokens(list(ids))


# (width, height) -> (rows, cols): fit in 140 px (aspect kept, floored), then each side up to a multiple of 28
@pytest.mark.parametrize(("size", "grid"), [((224, 160), (4, 5)), ((160, 256), (5, 4)), ((56, 56), (2, 2)),
                                            ((30, 10), (1, 2)), ((1000, 90), (1, 5))])
def test_one_grid_over_the_whole_image_with_markers_in_no_view(vlm, size, grid):
    picture = make_image(*size, seed=3)
    inputs = vlm.adapter.encode([picture], [QUESTION])
    rows, cols = grid
    assert token_grid(vlm.processor, size) == grid
    assert inputs["image_sizes"][0].tolist() == [rows * SIDE, cols * SIDE]  # what the model's patch merger reads
    layout = vlm.adapter.layouts(inputs, [picture])[0]
    (view,) = layout.images[0]
    assert (view.name, view.rows, view.cols) == ("image", rows, cols)
    assert view.region == (0.0, 0.0, float(size[0]), float(size[1]))
    ids = inputs["input_ids"][0].tolist()
    first = view.columns[0]
    expected = (["[IMG]"] * cols + ["[IMG_BREAK]"]) * rows
    expected[-1] = "[IMG_END]"
    assert _tokens(vlm, ids[first:first + rows * (cols + 1)]) == expected
    # row r of the view is the r-th run of [IMG] tokens: the marker after each run is in no view
    assert view.columns.reshape(rows, cols).tolist() == [[first + r * (cols + 1) + c for c in range(cols)]
                                                        for r in range(rows)]
    boxes = view.boxes().reshape(rows, cols, 4)
    assert boxes[0, 0].tolist() == pytest.approx([0, 0, size[0] / cols, size[1] / rows])
    assert boxes[-1, -1, 2:].tolist() == pytest.approx([size[0], size[1]])


def test_the_model_gives_one_feature_per_image_token(vlm):
    """The processor's token side (patch_size × spatial_merge_size) is the model's: the patch merger's output count
    is the [IMG] count, for two images of different sizes in one batch."""
    pictures = [make_image(224, 160, seed=1), make_image(160, 256, seed=2)]
    inputs = vlm.adapter.encode(pictures, [QUESTION, QUESTION])
    with torch.no_grad():
        features = vlm.model.get_image_features(pixel_values=inputs["pixel_values"],
                                                image_sizes=inputs["image_sizes"])
    features = getattr(features, "pooler_output", features)
    counts = [len(f) for f in features] if isinstance(features, (list, tuple)) else [int(features.shape[0])]
    assert sum(counts) == int((inputs["input_ids"] == vlm.adapter.image_token_id).sum()) == 2 * 20


def test_the_patch_merger_emits_blocks_row_major(vlm):
    """Token k of a rows × cols grid is merged from the 2 × 2 patches at block (k // cols, k % cols): fed patch
    features that carry their own patch index, a merging layer that keeps the top-left patch's first channel gives
    back the top-left patch index of each block in the adapter's row-major order."""
    merger = vlm.model.model.multi_modal_projector.patch_merger
    rows, cols, merge, patch = 3, 4, 2, int(vlm.model.config.vision_config.patch_size)
    h, w = rows * merge, cols * merge  # patches
    hidden = merger.merging_layer.in_features // merge**2
    features = torch.zeros(h * w, hidden)  # (patches, D), row-major patches
    features[:, 0] = torch.arange(h * w, dtype=torch.float32)
    weight = torch.zeros_like(merger.merging_layer.weight)  # (D, D·merge²)
    weight[0, 0] = 1.0  # channel 0 of the first patch of the block
    original = merger.merging_layer.weight.detach().clone()
    try:
        with torch.no_grad():
            merger.merging_layer.weight.copy_(weight)
            merged = merger(features, torch.tensor([[h * patch, w * patch]]))[:, 0]  # (rows·cols,)
    finally:
        with torch.no_grad():
            merger.merging_layer.weight.copy_(original)
    expected = [(merge * r) * w + merge * c for r in range(rows) for c in range(cols)]
    assert merged.tolist() == expected


def test_two_images_in_one_prompt_are_two_segments(vlm):
    """An image ends at its [IMG_END]: a 1 × 2 image right after a 2 × 1 one splits there."""
    tok = vlm.processor.tokenizer
    ids = np.array(tok.convert_tokens_to_ids(["<s>", "[INST]", "[IMG]", "[IMG_BREAK]", "[IMG]", "[IMG_END]", "[IMG]",
                                              "[IMG]", "[IMG_END]", "[/INST]"]))
    positions = np.nonzero(ids == vlm.adapter.image_token_id)[0]
    assert [s.tolist() for s in vlm.adapter.image_segments(ids, positions)] == [[2, 4], [6, 7]]


def test_prompt_has_one_bos_and_the_real_template_shape(vlm, image):
    inputs = vlm.adapter.encode([image], [QUESTION])
    tokens = _tokens(vlm, inputs["input_ids"][0].tolist())
    assert tokens[0] == "<s>" and tokens.count("<s>") == 1
    assert tokens[1] == "[SYSTEM_PROMPT]" and tokens[-1] == "[/INST]"
    start = tokens.index("[INST]")
    assert tokens[start - 1] == "[/SYSTEM_PROMPT]" and tokens[start + 1] == "[IMG]"


def test_text_only_prompt_is_the_template_without_the_image(vlm, image):
    inputs = vlm.adapter.encode([image], [QUESTION])
    text_only = vlm.adapter.text_only_ids(inputs["input_ids"][0].tolist())
    messages = [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]
    prompt = vlm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text_only == vlm.processor.tokenizer(prompt)["input_ids"]
    assert not {"[IMG]", "[IMG_BREAK]", "[IMG_END]"} & set(_tokens(vlm, text_only))


def test_shared_prefix_ends_after_img_end(vlm, image):
    rows = [vlm.adapter.encode([image], [q])["input_ids"][0].tolist() for q in ("Is the cup red?", "Where is the dog?")]
    shared = vlm.adapter.shared_prefix_length(rows[0])
    assert shared == vlm.adapter.shared_prefix_length(rows[1])
    assert _tokens(vlm, rows[0][shared - 1:shared]) == ["[IMG_END]"]
    assert next(i for i, (x, y) in enumerate(zip(*rows)) if x != y) == shared
    assert vlm.adapter.template_after_image == (vlm.processor.image_end_token_id,)


def test_sliding_window_is_none_and_honoured(vlm, image):
    inputs = vlm.adapter.encode([image], [QUESTION])
    text_config = vlm.model.config.get_text_config()
    assert text_config.sliding_window is None and vlm.adapter.shares_prefix_exactly(inputs)
    width = inputs["input_ids"].shape[1]
    try:
        text_config.sliding_window = width
        assert vlm.adapter.shares_prefix_exactly(inputs)
        text_config.sliding_window = width - 1  # could span the gap between a stored prefix and the question
        assert not vlm.adapter.shares_prefix_exactly(inputs)
    finally:
        text_config.sliding_window = None


def test_processor_is_the_real_class_and_saves_its_name(tmp_path):
    path = tiny_model_dir("mistral3")
    processor = load_processor(str(path))
    assert isinstance(processor, PixtralProcessorPil)
    assert type(processor).__mro__[2].__name__ == "PixtralProcessor"
    assert (processor.patch_size, processor.spatial_merge_size) == (14, 2)
    assert type(processor.image_processor).__name__ == "PixtralImageProcessorPil"
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "PixtralProcessor" and saved["spatial_merge_size"] == 2
