"""GLM-4.1V: the token grid over the whole smart-resized image between <|begin_of_image|> and <|end_of_image|>, the
text-only prompt, the prefix-sharing split point, and the partial interleaved M-RoPE that ``rotate`` must follow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers.models.glm4v import modeling_glm4v

from visfocus.testing import make_image

QUESTION = "Where is the cup?"


@pytest.fixture
def glm(tiny_vlms):
    return tiny_vlms["glm4v"]


def _token(vlm, text: str) -> int:
    return vlm.processor.tokenizer.convert_tokens_to_ids(text)


@pytest.mark.parametrize(("size", "grid"), [((224, 160), (6, 8)), ((160, 224), (8, 6)), ((320, 96), (3, 11)),
                                             ((1600, 1200), (9, 13))])
def test_one_view_over_the_whole_image_between_its_markers(size, grid, glm):
    """smart_resize: each side to a multiple of 28 px (patch 14 × merge 2), the token count capped at 128; one token
    per 28 px block of the resized image, row-major, so each token covers an equal share of the original image."""
    picture = make_image(*size, seed=3)
    inputs = glm.adapter.encode([picture], [QUESTION])
    _, gh, gw = inputs["image_grid_thw"][0].tolist()
    assert (gh // 2, gw // 2) == grid
    layout = glm.adapter.layouts(inputs, [picture])[0]
    (view,) = layout.images[0]
    assert view.name == "image" and (view.rows, view.cols) == grid
    ids = inputs["input_ids"][0].numpy()
    assert view.columns.tolist() == layout.image_positions.tolist()
    first, last = view.columns[0], view.columns[-1]
    assert last - first + 1 == len(view.columns) == grid[0] * grid[1]  # one run: no marker inside the grid
    assert ids[first - 1] == _token(glm, "<|begin_of_image|>") and ids[last + 1] == _token(glm, "<|end_of_image|>")
    w, h = size
    boxes = view.boxes()  # (rows * cols, 4)
    rows, cols = grid
    r, c = np.divmod(np.arange(rows * cols), cols)
    expected = np.stack([c * w / cols, r * h / rows, (c + 1) * w / cols, (r + 1) * h / rows], -1)
    assert boxes == pytest.approx(expected)


def test_text_only_prompt_is_the_chat_prompt_without_an_image(glm):
    inputs = glm.adapter.encode([make_image(224, 160)], [QUESTION])
    without = glm.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}], add_generation_prompt=True, tokenize=False)
    assert without == f"[gMASK]<sop><|user|>\n{QUESTION}<|assistant|>\n"
    expected = glm.processor.tokenizer(without, add_special_tokens=False)["input_ids"]
    assert glm.adapter.text_only_ids(inputs["input_ids"][0].tolist()) == expected


def test_the_shared_prefix_ends_after_end_of_image(glm):
    """The question follows <|end_of_image|> directly: the shared prefix is the image and its closing marker."""
    end = _token(glm, "<|end_of_image|>")
    assert glm.adapter.template_after_image == (end,)
    inputs = glm.adapter.encode([make_image(224, 160)], [QUESTION])
    row = inputs["input_ids"][0].tolist()
    split = glm.adapter.shared_prefix_length(row)
    assert row[split - 1] == end and row[split - 2] == glm.adapter.image_token_id
    question = glm.processor.tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    assert row[split:split + len(question)] == question


def _model_rope(model, vectors: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """R(p)·v with the modeling file's own code, as the text attention applies it: (B, H, K, D)."""
    cos, sin = model.model.language_model.rotary_emb(vectors, positions)  # (B, K, rotary_dim)
    return modeling_glm4v.apply_rotary_pos_emb(vectors, vectors, cos, sin)[0]


def test_rotate_composes_with_the_models_rope(glm):
    """rotate(R(p)·v, s) == R(p + s)·v, with 3-axis M-RoPE positions that differ per axis (as image tokens have)."""
    config = glm.model.config.get_text_config()
    D = config.hidden_size // config.num_attention_heads
    vectors = torch.randn(2, 3, 6, D, generator=torch.Generator().manual_seed(0))  # (B, H, K, D) before RoPE
    start = torch.randint(0, 40, (3, 2, 6), generator=torch.Generator().manual_seed(1))  # (3, B, K)
    shift = torch.randint(-20, 20, (3, 2, 6), generator=torch.Generator().manual_seed(2))  # (3, B, K)
    moved = glm.adapter.rotate(_model_rope(glm.model, vectors, start), shift)
    assert (moved - _model_rope(glm.model, vectors, start + shift)).abs().max().item() <= 1e-5
    flat = torch.full((2, 6), 7)  # (B, K): one text position on every axis
    assert torch.allclose(glm.adapter.rotate(vectors, flat), _model_rope(glm.model, vectors, flat.expand(3, -1, -1)))


def test_rope_rotates_half_the_dims_in_interleaved_pairs(glm):
    """Written out by hand: pair (2i, 2i + 1), i < 4, turns by p_axis(i) · θ^(−2i/8), axis(i) from mrope_section
    [2, 1, 1] (t, t, h, w); dims 8.. pass unchanged."""
    config = glm.model.config.get_text_config()
    assert config.rope_parameters["partial_rotary_factor"] == 0.5
    theta, D = config.rope_parameters["rope_theta"], config.hidden_size // config.num_attention_heads
    v = torch.randn(1, 1, 1, D, generator=torch.Generator().manual_seed(3)).double()  # (B, H, K, D)
    position = torch.tensor([5, 11, 17]).view(3, 1, 1)  # (3, B, K): t, h, w
    got = glm.adapter.rotate(v.float(), position).double()
    expected = v.clone()
    for i, axis in enumerate([0, 0, 1, 2]):
        angle = float(position[axis]) * theta ** (-2 * i / 8)
        x, y = v[..., 2 * i], v[..., 2 * i + 1]
        expected[..., 2 * i] = x * math.cos(angle) - y * math.sin(angle)
        expected[..., 2 * i + 1] = x * math.sin(angle) + y * math.cos(angle)
    assert (got - expected).abs().max().item() <= 1e-5
    assert torch.equal(got[..., 8:], v[..., 8:])
