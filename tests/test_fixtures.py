"""The tiny fixtures load like real checkpoints and their real processors give the real image-token layouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, ProcessorMixin

from visfocus.models import ADAPTERS, adapter_for
from visfocus.models import processor as processor_module
from visfocus.models.processor import load_processor
from visfocus.testing import FAMILIES, build_tiny, make_image, tiny_model_dir
from visfocus.testing.fixtures import FIXTURES

QWEN = [f for f in FAMILIES if f.startswith("qwen")]
REAL_PROCESSORS = {family: spec.real_processor for family, spec in FIXTURES.items()}
# Image tokens for a 224x160 (width x height) picture; pinned (in each fixture spec) so that other tests can rely on
# the geometry.
TOKENS_224x160 = {family: spec.image_tokens_224x160 for family, spec in FIXTURES.items()}
SRC = str(Path(__file__).resolve().parents[1] / "src")


def chat(processor: ProcessorMixin, question: str = "Where is the cup in relation to the table?") -> str:
    """The prompt of one image and ``question``: the chat template's — the processor's, or its tokenizer's where
    the processor keeps none (InstructBLIP's drops it) — or, with no template at all (PaliGemma), the image token
    then the question."""
    owner = next((o for o in (processor, processor.tokenizer) if o.chat_template is not None), None)
    if owner is None:
        return str(processor.image_token) + question
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    family = request.param
    path = build_tiny(family, tmp_path_factory.mktemp(family))
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    return family, path, model, load_processor(str(path))


def test_families_registry():
    """Every registered adapter model type has a fixture spec and every fixture spec an adapter."""
    assert FAMILIES == tuple(FIXTURES)
    assert set(FAMILIES) == {adapter.family for adapter in ADAPTERS.values()}


def test_fixture_is_small_and_consistent(tiny):
    family, path, model, processor = tiny
    assert isinstance(processor, ProcessorMixin)
    assert sum(f.stat().st_size for f in path.iterdir()) < 1_000_000
    tok, cfg = processor.tokenizer, model.config
    text = cfg.get_text_config()
    assert text.vocab_size == len(tok) == model.get_output_embeddings().weight.shape[0]
    assert text.num_hidden_layers in (2, 3) and 32 <= text.hidden_size <= 64
    assert text.num_attention_heads == 4 and text.num_key_value_heads == 2  # GQA
    assert tok.padding_side == "left"
    # The token the model fills with image features is the tokenizer's image token (or the processor's own where the
    # tokenizer names none: InstructBLIP), and one the processor marks as an image token; its ``image_token_id`` may
    # instead be the placeholder it expands (Gemma 3: <start_of_image>), or missing (InstructBLIP).
    image_token = tok.image_token if hasattr(tok, "image_token") else str(processor.image_token)
    assert cfg.image_token_id == tok.convert_tokens_to_ids(image_token)
    marked = getattr(processor, "image_token_ids", None) or [getattr(processor, "image_token_id", None)]
    assert cfg.image_token_id in marked or marked == [None]
    gen = model.generation_config
    assert gen.eos_token_id is not None and gen.pad_token_id == tok.pad_token_id == text.pad_token_id
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    assert tok.eos_token_id in eos
    if family in QWEN:
        for name, token in [("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
                            ("video_token_id", "<|video_pad|>")]:
            assert getattr(cfg, name) == tok.convert_tokens_to_ids(token)
    elif tok.bos_token_id is not None:
        assert text.bos_token_id == tok.bos_token_id == gen.bos_token_id
    # The real class name is on disk, so AutoProcessor picks the real processor where torchvision exists.
    for name in ("processor_config.json", "tokenizer_config.json"):
        assert json.loads((path / name).read_text())["processor_class"] == REAL_PROCESSORS[family]


def test_image_token_layout_and_forward(tiny):
    """The chat prompt is the family's; the processor gives the pinned number of image tokens for a 224 × 160
    picture; the adapter finds one image in them, whose views' grids imply exactly that count (``views`` checks it),
    each view token an image token of at most one view; the model runs on it."""
    family, _, model, processor = tiny
    prompt = chat(processor)
    contains, ending = FIXTURES[family].prompt_marks
    assert contains in prompt and prompt.endswith(ending)
    image = make_image(224, 160)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    ids = inputs["input_ids"][0]
    adapter = adapter_for(model.config.model_type)(model, processor)
    is_image = ids == adapter.image_token_id
    count = int(is_image.sum())
    assert count == TOKENS_224x160[family]
    [layout] = adapter.layouts(dict(inputs), [image])
    assert len(layout.images) == 1
    if adapter.no_grid_reason:  # query tokens: no view over the image, and the layout says why
        assert layout.images[0] == [] and layout.no_grid == adapter.no_grid_reason
    else:
        columns = np.concatenate([view.columns for view in layout.images[0]])
        assert len(set(columns.tolist())) == len(columns) and bool(is_image[columns].all())

    if family in QWEN:
        t, gh, gw = inputs["image_grid_thw"][0].tolist()
        merge = processor.image_processor.merge_size
        assert count == t * (gh // merge) * (gw // merge)
        where = is_image.nonzero().flatten()
        assert ids[where[0] - 1] == model.config.vision_start_token_id
        assert ids[where[-1] + 1] == model.config.vision_end_token_id
        assert "mm_token_type_ids" in inputs

    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, ids.shape[0], model.config.get_text_config().vocab_size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("family", QWEN)
def test_qwen_grid_follows_image_size(family):
    processor = load_processor(str(tiny_model_dir(family)))
    prompt = chat(processor)
    grids = [processor(images=[make_image(w, h)], text=[prompt], return_tensors="pt")["image_grid_thw"][0].tolist()
             for w, h in [(224, 160), (160, 224), (320, 96)]]
    assert len({tuple(g) for g in grids}) == 3
    # Stays small: tens of tokens, capped for large images.
    big = processor(images=[make_image(1600, 1200)], text=[prompt], return_tensors="pt")["image_grid_thw"][0]
    assert int(big.prod()) // processor.image_processor.merge_size**2 <= 128


def test_left_padding_batch(tiny):
    family, _, model, processor = tiny
    prompts = [chat(processor, "Is the dog under the table?"),
               chat(processor, "Is the cat on the left of the cup? Answer with yes or no.")]
    images = [make_image(224, 160, seed=1), make_image(224, 160, seed=2)]
    # one list of images per prompt: every processor takes them so, and some (Gemma 3) only so
    inputs = processor(images=[[im] for im in images], text=prompts, padding=True, return_tensors="pt")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    pad = processor.tokenizer.pad_token_id
    # the shorter row is padded on the left of its text; only image tokens may come before the padding (InstructBLIP
    # puts its query tokens first, before the padding)
    first_pad = int((mask[0] == 0).nonzero()[0])
    assert ids[0, first_pad] == pad and bool((ids[0, :first_pad] == model.config.image_token_id).all())
    assert mask[1].all() and mask[0, -1] == 1
    counts = (ids == model.config.image_token_id).sum(-1)
    assert counts[0] == counts[1] == TOKENS_224x160[family]
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == ids.shape and torch.isfinite(logits).all()


def test_build_is_deterministic_and_redraws_weights(tmp_path):
    a = AutoModelForImageTextToText.from_pretrained(build_tiny("qwen3_vl", tmp_path / "a", seed=3))
    b = AutoModelForImageTextToText.from_pretrained(build_tiny("qwen3_vl", tmp_path / "b", seed=3))
    c = AutoModelForImageTextToText.from_pretrained(build_tiny("qwen3_vl", tmp_path / "c", seed=4))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    q_proj = a.model.language_model.layers[0].self_attn.q_proj.weight
    assert 0.12 < float(q_proj.detach().std()) < 0.18  # re-drawn with weight_std, not initializer_range 0.02


def test_unknown_family_names_the_families(tmp_path):
    with pytest.raises(ValueError) as err:
        build_tiny("blip2", tmp_path)
    assert all(f in str(err.value) for f in FAMILIES)


def test_cli_build(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])))
    out = tmp_path / "q3"
    run = subprocess.run([sys.executable, "-m", "visfocus.testing", "build", "qwen3_vl", str(out)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen3_vl"
    assert isinstance(load_processor(str(out)), ProcessorMixin)


def test_tiny_model_dir_is_cached():
    assert tiny_model_dir("llava") == tiny_model_dir("llava")
    assert (tiny_model_dir("llava") / "model.safetensors").is_file()


def test_make_image_is_deterministic():
    a, b, c = make_image(64, 48, seed=5), make_image(64, 48, seed=5), make_image(64, 48, seed=6)
    assert a.size == (64, 48) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes() != c.tobytes()
    assert len(a.getcolors(maxcolors=4096)) >= 3  # background plus coloured shapes
    assert make_image(7, 5).size == (7, 5)


@pytest.mark.parametrize("family", QWEN)
@pytest.mark.parametrize("failure", ["raises", "tokenizer_only"])
def test_load_processor_falls_back_for_qwen(family, failure, monkeypatch):
    path = str(tiny_model_dir(family))
    tokenizer = load_processor(path).tokenizer

    def broken(*args, **kwargs):
        if failure == "raises":
            raise OSError("Can't load video processor for this model")
        return tokenizer  # what AutoProcessor does when processor_class is unknown

    monkeypatch.setattr(processor_module.AutoProcessor, "from_pretrained", broken)
    processor = load_processor(path)
    assert isinstance(processor, ProcessorMixin)
    assert type(processor).__name__ == REAL_PROCESSORS[family] + "NoVideo"
    inputs = processor(images=[make_image(224, 160)], text=[chat(processor)], return_tensors="pt")
    assert "mm_token_type_ids" in inputs and "image_grid_thw" in inputs


def test_load_processor_without_fallback_raises_one_line(tmp_path):
    path = build_tiny("llava", tmp_path / "llava")
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        (path / name).unlink()
    with pytest.raises(ValueError) as err:
        load_processor(str(path))
    message = str(err.value)
    assert "\n" not in message and "llava" in message and str(path) in message


def test_saved_fallback_processor_keeps_the_real_class_name(tmp_path):
    processor = load_processor(str(tiny_model_dir("qwen2_vl")))
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"
