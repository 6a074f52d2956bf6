"""SmolVLM / Idefics3: row-major tiles of the stretched image then the global image, each token's pixel box; image
tokens split by the marker tokens; the text-only prompt and the prefix-sharing split point; an Idefics3 model answers
through the same adapter."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import transformers

import visfocus as vf
from visfocus.models.layout import contiguous_segments
from visfocus.models.processor import load_processor
from visfocus.models.smolvlm import SmolVLMAdapter, tile_grid
from visfocus.testing import make_image
from visfocus.testing.fixtures import _redraw, make_tokenizer
from visfocus.testing.spec_smolvlm import SMOLVLM_SCALE, SMOLVLM_SEQ, smolvlm_parts

QUESTION = "Where is the cup?"
G = 2  # 64 px tiles, patch 8, pixel shuffle 4: 2 × 2 tokens per tile


@pytest.fixture(scope="module")
def vlm(tiny_vlms):
    return tiny_vlms["smolvlm"]


def _ids(vlm, name: str) -> int:
    return vlm.processor.tokenizer.convert_tokens_to_ids(name)


def _layout(vlm, picture):
    inputs = vlm.adapter.encode([picture], [QUESTION])
    return inputs, vlm.adapter.layouts(inputs, [picture])[0]


@pytest.mark.parametrize(("size", "grid"), [((224, 160), (3, 4)), ((160, 256), (4, 3)), ((300, 40), (1, 4)),
                                            ((40, 300), (4, 1))])
def test_tiles_row_major_then_the_global_image(size, grid, vlm):
    """Every picture is tiled here (its longest edge is resized to 4 tiles): the tiles, then the global image."""
    picture, (rows, cols), (w, h) = make_image(*size, seed=4), grid, size
    inputs, layout = _layout(vlm, picture)
    ids = inputs["input_ids"][0].numpy()
    views, tiles = layout.images[0], rows * cols
    assert inputs["pixel_values"].shape[1] == len(views) == tiles + 1  # one view per processed tile
    assert [v.name for v in views] == [f"tile_{r}_{c}" for r in range(rows) for c in range(cols)] + ["global"]
    fake, global_image = _ids(vlm, "<fake_token_around_image>"), _ids(vlm, "<global-img>")
    for k, view in enumerate(views[:-1]):  # each tile's tokens follow its <fake_token_around_image><row_r_col_c>
        r, c = divmod(k, cols)
        assert (view.rows, view.cols) == (G, G)
        assert view.columns.tolist() == list(range(view.columns[0], view.columns[0] + G * G))
        assert ids[view.columns[0] - 2:view.columns[0]].tolist() == [fake, _ids(vlm, f"<row_{r + 1}_col_{c + 1}>")]
        assert view.region == pytest.approx((c * w / cols, r * h / rows, (c + 1) * w / cols, (r + 1) * h / rows))
        boxes = view.boxes()  # 2 × 2 tokens per tile, row-major, each a quarter of it
        assert boxes[1].tolist() == pytest.approx([(c + 0.5) * w / cols, r * h / rows, (c + 1) * w / cols,
                                                   (r + 0.5) * h / rows])
    glob = views[-1]
    assert ids[glob.columns[0] - 2:glob.columns[0]].tolist() == [fake, global_image]
    assert ids[glob.columns[-1] + 1] == fake  # the closing marker
    assert glob.region == (0.0, 0.0, float(w), float(h))
    assert glob.boxes()[-1].tolist() == pytest.approx([w / 2, h / 2, w, h])
    tile_boxes = np.concatenate([v.boxes() for v in views[:-1]])
    areas = (tile_boxes[:, 2] - tile_boxes[:, 0]) * (tile_boxes[:, 3] - tile_boxes[:, 1])
    assert areas.sum() == pytest.approx(w * h)  # the tiles cover the picture once
    # every image token in exactly one view; markers and newlines in none
    columns = np.concatenate([v.columns for v in views])
    image_positions = np.nonzero(ids == vlm.adapter.image_token_id)[0].tolist()
    assert sorted(columns.tolist()) == layout.image_positions.tolist() == image_positions
    newline = vlm.processor.tokenizer("\n", add_special_tokens=False)["input_ids"]
    between = ids[layout.image_positions[0]:layout.image_positions[-1]]
    assert (between == newline[0]).sum() == rows + 1  # one after each row of tiles, one before the global image


@pytest.mark.parametrize("width", [1, 7, 63, 64, 65, 100, 127, 128, 129, 200, 256, 257, 333, 600, 1500])
def test_tile_grid_is_the_image_processors(width, vlm):
    """tile_grid repeats the image processor's resize arithmetic: the same rows and columns for any size."""
    ip = vlm.processor.image_processor
    for height in (1, 5, 64, 65, 97, 128, 181, 256, 400, 2000):
        got = ip(images=[[make_image(width, height)]], return_row_col_info=True)
        assert tile_grid(vlm.processor, (width, height)) == (got["rows"][0][0], got["cols"][0][0]), (width, height)


def test_without_splitting_one_global_view(vlm, monkeypatch):
    monkeypatch.setattr(vlm.processor.image_processor, "do_image_splitting", False)
    picture = make_image(224, 160)
    inputs, layout = _layout(vlm, picture)
    (view,) = layout.images[0]
    assert (view.name, view.rows, view.cols, view.region) == ("global", G, G, (0.0, 0.0, 224.0, 160.0))
    assert inputs["pixel_values"].shape[1] == 1


def test_image_segments_follow_the_markers_not_contiguity(vlm):
    """Two images in one prompt: each image's tokens are one segment, though the markers cut them into many runs."""
    first, second = make_image(224, 160), make_image(40, 300, seed=3)
    prompt = "<|im_start|>User:<image>and<image>Where is the cup?<end_of_utterance>\nAssistant:"
    inputs = vlm.processor(images=[[first, second]], text=[prompt], return_tensors="pt")
    ids = inputs["input_ids"][0].numpy()
    positions = np.nonzero(ids == vlm.adapter.image_token_id)[0]
    segments = vlm.adapter.image_segments(ids, positions)
    assert [len(s) for s in segments] == [13 * G * G, 5 * G * G]  # 3 × 4 and 4 × 1 tiles, each + global
    assert np.concatenate(segments).tolist() == positions.tolist()
    assert len(contiguous_segments(positions)) == 18  # runs: 12 + 4 tiles + 2 global images
    assert vlm.processor.tokenizer.decode(ids[segments[0][-1] + 2:segments[1][0] - 2]) == "and"


def test_text_only_prompt_drops_the_image_block(vlm, other_image):
    """The prompt without its image is the chat template's text with no image: every image token, marker and the
    processor's newlines go (a tiled and an untiled image)."""
    tok = vlm.processor.tokenizer
    expected = tok(vlm.adapter.build_prompt(QUESTION).replace("<image>", ""))["input_ids"]
    assert tok.decode(expected) == f"<|im_start|>User:{QUESTION}<end_of_utterance>\nAssistant:"
    for picture in (other_image, make_image(50, 60)):
        ids = vlm.adapter.encode([picture], [QUESTION])["input_ids"][0].tolist()
        assert vlm.adapter.text_only_ids(ids) == expected


def test_shared_prefix_ends_after_the_closing_marker(vlm, image):
    fake = _ids(vlm, "<fake_token_around_image>")
    assert vlm.adapter.template_after_image == (fake,)
    rows = [vlm.adapter.encode([image], [q])["input_ids"][0].tolist() for q in (QUESTION, "Is the dog under it?")]
    lengths = [vlm.adapter.shared_prefix_length(r) for r in rows]
    assert lengths[0] == lengths[1] and rows[0][:lengths[0]] == rows[1][:lengths[1]]
    assert rows[0][lengths[0] - 2:lengths[0]] == [vlm.adapter.image_token_id, fake]
    assert vlm.processor.tokenizer.decode(rows[0][lengths[0]:]).startswith(QUESTION)


def test_encode_gives_the_real_processor_one_image_list_per_prompt(vlm, image, other_image, monkeypatch):
    """SmolVLMProcessor reads a flat image list as the first prompt's images; the adapter nests them per prompt."""
    real = types.MethodType(transformers.SmolVLMProcessor.prepare_inputs_layout, vlm.processor)
    monkeypatch.setattr(vlm.processor, "prepare_inputs_layout", real)
    with pytest.raises(ValueError, match="should be the same as the number of images"):
        vlm.processor(images=[image, other_image], text=[vlm.adapter.build_prompt(QUESTION)] * 2)
    inputs = vlm.adapter.encode([image, other_image], [QUESTION, "Is the dog under the table?"])
    assert (inputs["input_ids"] == vlm.adapter.image_token_id).sum(-1).tolist() == [13 * G * G, 13 * G * G]


def test_load_processor_falls_back_to_the_image_only_processor(tiny_dirs):
    processor = load_processor(str(tiny_dirs["smolvlm"]))  # no torchvision, no num2words here
    assert type(processor).__name__ == "SmolVLMProcessorNoVideo"
    assert not hasattr(processor, "video_processor") or processor.video_processor is None


def _tiny_idefics3(path):
    """A tiny Idefics3 with the SmolVLM fixture's tokenizer, sizes and image processor."""
    tok = make_tokenizer("smolvlm")
    vision, text, ip_kwargs = smolvlm_parts(tok)
    config = transformers.Idefics3Config(
        vision_config=transformers.Idefics3VisionConfig(**vision), text_config=text, scale_factor=SMOLVLM_SCALE,
        image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = transformers.Idefics3ForConditionalGeneration(config).eval()
    _redraw(model, 0.15, torch.Generator().manual_seed(0))  # attention far from uniform, as the fixtures
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False)
    processor = transformers.Idefics3Processor(transformers.Idefics3ImageProcessorPil(**ip_kwargs), tok,
                                               image_seq_len=SMOLVLM_SEQ, chat_template=tok.chat_template)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_an_idefics3_model_answers_through_the_same_adapter(tmp_path, image):
    path = _tiny_idefics3(tmp_path / "idefics3")
    vlm = vf.load(str(path))
    assert isinstance(vlm.adapter, SmolVLMAdapter) and vlm.adapter.family == "smolvlm"
    inputs, layout = _layout(vlm, image)
    assert [v.name for v in layout.images[0]][-2:] == ["tile_2_3", "global"]
    plain = transformers.AutoModelForImageTextToText.from_pretrained(path, attn_implementation="sdpa").eval()
    with torch.no_grad():
        expected = plain(**inputs, position_ids=vlm.adapter.prefill_position_ids(inputs)).logits[0, -1]
    answer = vlm.answer(image, QUESTION, max_new_tokens=2)
    assert (answer.first_token_logits - expected).abs().max().item() <= 1e-5
    edited = vlm.answer(image, QUESTION, method=vf.method("scaling_vis", alpha=0.0), max_new_tokens=1)
    assert (edited.first_token_logits - expected).abs().max().item() > 1e-4  # the image tokens are found and edited
