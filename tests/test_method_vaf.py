"""ClearSight / VAF against an independent eager reference: image columns × enhance and the columns before the image
× suppress, on every prompt row after the image and every decoding row, in the chosen layers (fp32)."""

from __future__ import annotations

import pytest
import torch
from eager_reference import load_reference, post_image_selection, reference_scaled_logits

import visfocus as vf
import visfocus.interventions.vaf  # noqa: F401  (registration)
from visfocus.interventions.base import param_specs, parse_method_args, resolve_layers
from visfocus.interventions.vaf import VAFParams
from visfocus.testing import FAMILIES

QUESTION = "Where is the cup in relation to the table?"
QUESTIONS = [QUESTION, "Is the dog on the table or under the table, left of the cat? Answer with yes or no."]


@pytest.fixture(scope="module")
def references(tiny_dirs):
    return {family: load_reference(path) for family, path in tiny_dirs.items()}


def _expected(vlm, reference, images, questions, *, enhance, suppress, layers, last_only=False):
    """(B, V) first-token logits of the eager reference under VAF's rows × columns."""
    inputs = vlm.adapter.encode(images, questions)
    image_cols = vlm.adapter.image_cols(inputs)
    rows, factors = post_image_selection(inputs["input_ids"], inputs["attention_mask"], vlm.adapter.image_token_id,
                                         image_factor=enhance, before_factor=suppress)
    if last_only:  # the approximation: the last prompt row only (and the decoding rows)
        rows = torch.zeros_like(rows)
        rows[:, -1] = True
    return reference_scaled_logits(reference, inputs, vlm.adapter.prefill_position_ids(inputs), image_cols,
                                   rows=rows, factors=factors, decode=True, layers=layers)[:, -1]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padded", [False, True], ids=["single", "left_padded"])
def test_vaf_matches_eager_reference(family, padded, tiny_vlms, references, image, other_image):
    vlm = tiny_vlms[family]
    images, questions = ([image, other_image], QUESTIONS) if padded else ([image], [QUESTION])
    method = vf.method("vaf", enhance=1.5, suppress=0.5, layers=(0, 1))
    answers = vlm.answer_batch(images, questions, method=method, max_new_tokens=1)
    expected = _expected(vlm, references[family], images, questions, enhance=1.5, suppress=0.5, layers={0, 1})
    plain = _expected(vlm, references[family], images, questions, enhance=1.0, suppress=1.0, layers={0, 1})
    last_only = _expected(vlm, references[family], images, questions, enhance=1.5, suppress=0.5, layers={0, 1},
                          last_only=True)
    for b, answer in enumerate(answers):
        assert torch.isfinite(answer.first_token_logits).all()
        assert (answer.first_token_logits - expected[b]).abs().max().item() <= 1e-4
        assert (expected[b] - plain[b]).abs().max().item() > 1e-3  # the edit really moves the logits
        assert (expected[b] - last_only[b]).abs().max().item() > 1e-4  # and the earlier rows' edits matter
        assert answer.extras == {}  # VAF reports no per-row decision (no α: enhance and suppress are its parameters)


@pytest.mark.parametrize("family", ["qwen3_vl", "llava"])
def test_reference_defaults_match_on_the_fallback_layer(family, tiny_vlms, references, image, other_image):
    vlm = tiny_vlms[family]
    answers = vlm.answer_batch([image, other_image], QUESTIONS, method=vf.method("vaf"), max_new_tokens=1)
    expected = _expected(vlm, references[family], [image, other_image], QUESTIONS, enhance=1.15, suppress=0.95,
                         layers={0})  # "0.28:0.45" holds no layer of 2: layer 0's span [0, 0.5) overlaps it
    for b, answer in enumerate(answers):
        assert (answer.first_token_logits - expected[b]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_next"])
def test_last_row_approximation_matches_its_reference_and_shares_prefixes(family, tiny_vlms, references, image,
                                                                           other_image):
    vlm = tiny_vlms[family]
    method = vf.method("vaf", enhance=1.5, suppress=0.5, layers=None, rows="last")
    assert method.shares_prefix and method.prefix_split == "template"
    unshared = vlm.answer_batch([image, other_image], QUESTIONS, method=method, max_new_tokens=3, share_prefix=False)
    vlm.prefix_store.clear()
    shared = vlm.answer_batch([image, other_image], QUESTIONS, method=method, max_new_tokens=3)
    expected = _expected(vlm, references[family], [image, other_image], QUESTIONS, enhance=1.5, suppress=0.5,
                         layers=None, last_only=True)
    faithful = _expected(vlm, references[family], [image, other_image], QUESTIONS, enhance=1.5, suppress=0.5,
                         layers=None)
    for b in range(2):
        assert shared[b].cost["shared_prefix_tokens"] > 0
        assert shared[b].text == unshared[b].text
        assert (shared[b].first_token_logits - unshared[b].first_token_logits).abs().max().item() <= 1e-4
        assert (unshared[b].first_token_logits - expected[b]).abs().max().item() <= 1e-4
        assert (expected[b] - faithful[b]).abs().max().item() > 1e-4  # an approximation, not the reference


@pytest.mark.parametrize("family", FAMILIES)
def test_faithful_rows_share_a_prefix_that_ends_at_the_image(family, tiny_vlms, image, other_image):
    """rows="post_image" edits every row after the image, so its stored prefix ends at the image: every edited row
    runs in the question's forward, and the answers equal whole prefills (on a family that shares at all)."""
    vlm = tiny_vlms[family]
    method = vf.method("vaf", enhance=1.5, suppress=0.5, layers=None)
    assert method.shares_prefix and method.prefix_split == "image"
    vlm.prefix_store.clear()
    first = vlm.answer_batch([image, other_image], QUESTIONS, method=method, max_new_tokens=3)  # prefixes stored
    again = vlm.answer_batch([image, other_image], QUESTIONS, method=method, max_new_tokens=3)  # from the store
    unshared = vlm.answer_batch([image, other_image], QUESTIONS, method=method, max_new_tokens=3, share_prefix=False)
    for s, t, u in zip(first, again, unshared):
        assert s.text == t.text == u.text
        assert (s.first_token_logits - u.first_token_logits).abs().max().item() <= 1e-4
        assert (t.first_token_logits - u.first_token_logits).abs().max().item() <= 1e-4
    batch = vlm.prepare([image, other_image], QUESTIONS, share_prefix=True)  # a prefix through the template text
    if batch.runner.sharing is not None and batch.adapter.template_after_image:
        with pytest.raises(vf.VisfocusError, match="every prompt row after the image in one forward"):
            method.apply(batch, max_new_tokens=1)
    vlm.prefix_store.clear()  # the refused call stored its prefixes


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_equals_the_plain_model(family, tiny_vlms, image, other_image):
    vlm = tiny_vlms[family]
    identity = vf.method("vaf", **vf.METHODS["vaf"].identity)
    assert identity.edits(vlm.num_layers) == ()
    plain = vlm.answer_batch([image, other_image], QUESTIONS, max_new_tokens=3, share_prefix=False)
    same = vlm.answer_batch([image, other_image], QUESTIONS, method=identity, max_new_tokens=3, share_prefix=False)
    for p, s in zip(plain, same):
        assert s.text == p.text
        assert torch.equal(s.first_token_logits, p.first_token_logits)


def test_default_layers_are_the_references_9_to_14_of_32():
    default = VAFParams().layers
    assert resolve_layers(default, 32) == tuple(range(9, 15))  # the reference's `if i > 8 and i < 15`
    assert resolve_layers(default, 32) == tuple(range(9, 15))
    assert resolve_layers(default, 28) == tuple(range(8, 13)) and resolve_layers(default, 36) == tuple(range(11, 17))
    assert [resolve_layers(default, n) for n in (1, 2, 4)] == [(0,), (0,), (1,)]  # too shallow: the overlapping layer
    assert resolve_layers((3, 5), 8) == (3, 5) and resolve_layers(None, 8) is None
    assert vf.method("vaf").resolved(32) == {"layers": list(range(9, 15))}
    assert vf.method("vaf", layers=(1,)).resolved(32) == {}


def test_parameters_and_controls():
    assert vf.methods()["vaf"] == {"enhance": 1.15, "suppress": 0.95, "layers": "0.28:0.45", "rows": "post_image"}
    kinds = {spec.name: (spec.kind, spec.choices) for spec in param_specs("vaf")}
    assert kinds == {"enhance": ("float", None), "suppress": ("float", None), "layers": ("layers", None),
                     "rows": ("str", ("post_image", "last"))}
    assert parse_method_args("vaf", "enhance=1.3,layers=0.25:0.5,rows=last") == {
        "enhance": 1.3, "layers": "0.25:0.5", "rows": "last"}
    for point in ({"enhance": e, "suppress": s} for e in vf.METHODS["vaf"].search_grid["enhance"]
                  for s in vf.METHODS["vaf"].search_grid["suppress"]):
        vf.method("vaf", **point)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"enhance": -0.5}, "enhance must be ≥ 0.0"),
    ({"suppress": float("nan")}, "suppress must be a finite number"),
    ({"enhance": "strong"}, "enhance must be a finite number"),
    ({"rows": "all"}, "rows must be one of post_image, last"),
    ({"layers": "0.5:0.2"}, "fraction range"),
    ({"layers": "middle"}, "give layer indices"),
    ({"layers": ()}, "layers is empty"),
])
def test_bad_parameters_are_one_line_errors(kwargs, match):
    with pytest.raises(vf.VisfocusError, match=match) as error:
        vf.method("vaf", **kwargs)
    assert "\n" not in str(error.value)


def test_layers_beyond_the_decoder_are_refused_at_run(tiny_vlms, image):
    with pytest.raises(vf.VisfocusError, match="out of range") as error:
        tiny_vlms["llava"].answer(image, QUESTION, method=vf.method("vaf", layers=(5,)), max_new_tokens=1)
    assert "\n" not in str(error.value)
