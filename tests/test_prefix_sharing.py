"""Image-prefix sharing: questions about one image start from its stored prefix (image tokens and the template around
them), within a batch and across calls, and give the answers of the ordinary left-padded path."""

from __future__ import annotations

import pytest
import torch

import visfocus as vf
from visfocus.interventions.base import Params, param_specs
from visfocus.interventions.baseline import Baseline
from visfocus.interventions.batch import Batch
from visfocus.steer.prefix import PrefixStore, StoredPrefix, image_fingerprint, leading_padding, split_layout
from visfocus.steer.rows import TEXT_ONLY_TAG
from visfocus.testing import FAMILIES

# questions of different token lengths; images alternate so both paddings (left and middle) occur
QUESTIONS = ["Is the cup on the table?", "Where is the dog?", "Is there a cat in the image? Answer with yes or no.",
             "left", "Describe the image."]
OPTIONS = [("yes", "no")] * len(QUESTIONS)
TOKENS = 4
QWEN_AND_LLAVA = ["qwen2_5_vl", "llava"]


def _images(a, b):
    return [a, a, b, a, b]


def _shares(vlm, images, new_tokens: int = TOKENS) -> bool:
    """Whether the family shares these rows' image prefixes exactly while decoding ``new_tokens`` tokens
    (``Adapter.shares_prefix_exactly``: a prefix-LM's image tokens see the question, so it never does; a sliding
    window that could span the gap before the question forbids it), else the batch is prefilled whole."""

    return Batch._encode(vlm.adapter, images, QUESTIONS, vlm.prefix_store, new_tokens)[1] is not None


def assert_nothing_shared(*answer_lists) -> None:
    for answers in answer_lists:
        assert all(a.cost["shared_prefix_tokens"] == 0 for a in answers)


def _fingerprint(im) -> str:
    return image_fingerprint(im.mode, im.size, im.tobytes())


def _stored_images(vlm) -> list[str]:
    """The image fingerprint of every store entry (keys are (tag, image fingerprint, tokens))."""
    return [key[1] for key in vlm.prefix_store.entries]


def assert_logits_equal(got: torch.Tensor, ref: torch.Tensor, tol: float = 1e-4) -> None:
    """Same non-finite entries (NaN, ±inf) in the same places; finite entries within ``tol``."""
    assert got.shape == ref.shape
    assert torch.equal(torch.isnan(got), torch.isnan(ref))
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(got), finite)
    infinite = torch.isinf(ref)
    assert torch.equal(got[infinite], ref[infinite])  # same signs of infinity
    assert finite.any()
    assert (got[finite] - ref[finite]).abs().max().item() <= tol


def assert_same_extras(got: dict, ref: dict, tol: float = 1e-4) -> None:
    """The same per-row decisions (alpha_used, branch, chosen layers, …); real numbers within ``tol``."""
    assert got.keys() == ref.keys()
    for key, value in ref.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, abs=tol), key
        else:
            assert got[key] == value, key


def assert_same_answers(got, ref, tol: float = 1e-4) -> None:
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert_logits_equal(g.first_token_logits, r.first_token_logits, tol)
        assert_logits_equal(g.first_token_scores, r.first_token_scores, tol)
        assert g.text == r.text
        assert_same_extras(g.extras, r.extras, tol)


def _shares_by_default(name: str) -> bool:
    return vf.method(name).shares_prefix


# Every registered method that shares prefixes with its default parameters (away from its identity point, so that it
# really acts), and again with ``decode=True`` where it declares that switch (its edit then reaches the decoding rows,
# which run on the shared cache).
SHARING = sorted(name for name in vf.METHODS if _shares_by_default(name))
SHARING_SPECS = [(name, {}) for name in SHARING] + [
    (name, {"decode": True}) for name in SHARING
    if any(spec.name == "decode" and spec.kind == "bool" and spec.default is False for spec in param_specs(name))]


def _spec_id(spec) -> str:
    name, kwargs = spec
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items())


def _method(vlm, images, name: str, **kwargs):
    """The method under test: its defaults (AdaptVis: a threshold that sends rows down both branches)."""
    method = _adaptvis_both_branches(vlm, images, **kwargs) if name == "adaptvis" else vf.method(name, **kwargs)
    assert method.shares_prefix
    if vf.METHODS[name].identity:
        assert method.distance_from_identity() > 0  # not the identity point: the method acts
    return method


def _stored_streams(name: str) -> int:
    """How many prompt streams a method keeps in the prefix store: the batch's, and an image stream of its own."""
    return 1 + ("other_image" in vf.METHODS[name].side_streams)


def _adaptvis_both_branches(vlm, images, **kwargs):
    """AdaptVis on option probabilities with a threshold between the rows' confidences, so both branches occur."""
    probe = vlm.answer_batch(images, QUESTIONS, vf.method("adaptvis", confidence="option_prob", threshold=0.0),
                             options=OPTIONS, max_new_tokens=1, share_prefix=False)
    confidences = sorted(a.extras["confidence_used"] for a in probe)
    assert confidences[1] < confidences[2]
    return vf.method("adaptvis", confidence="option_prob", threshold=(confidences[1] + confidences[2]) / 2, **kwargs)


def test_the_sharing_methods_are_read_from_the_registry():
    assert {"baseline", "pai", "m3id", "deco", "dola", "vcd"} <= set(SHARING)
    assert "vea" not in SHARING  # pass 2 changes the image


@pytest.mark.parametrize("spec", SHARING_SPECS, ids=_spec_id)
@pytest.mark.parametrize("family", FAMILIES)
def test_shared_batch_equals_unshared(family, spec, tiny_vlms, image, other_image):
    vlm = tiny_vlms[family]
    images = _images(image, other_image)
    name, method_kwargs = spec
    method = _method(vlm, images, name, **method_kwargs)
    kwargs = dict(options=OPTIONS, max_new_tokens=TOKENS)
    ref = vlm.answer_batch(images, QUESTIONS, method, share_prefix=False, trace=True, **kwargs)
    if name == "adaptvis":
        assert {a.extras["branch"] for a in ref} == {"smooth", "sharpen"}
    vlm.prefix_store.clear()
    first = vlm.answer_batch(images, QUESTIONS, method, trace=True, **kwargs)  # every prefix computed here
    again = vlm.answer_batch(images, QUESTIONS, method, **kwargs)  # every prefix from the store
    assert_same_answers(first, ref)
    assert_same_answers(again, ref)
    if not _shares(vlm, images):  # prefilled whole: the same answers, nothing from a stored prefix
        assert_nothing_shared(first, again)
        return
    assert again[0].cost["prefill_tokens"] < first[0].cost["prefill_tokens"]
    for g, r in zip(first, ref):
        assert g.cost["shared_prefix_tokens"] > len(g.layout.image_positions) > 0
        assert r.cost["shared_prefix_tokens"] == 0
        assert list(g.layout.image_positions) == list(r.layout.image_positions)
        assert g.trace.last_row.shape == r.trace.last_row.shape
        assert (g.trace.last_row - r.trace.last_row).abs().max().item() <= 1e-5
        assert (g.trace.last_row_pre - r.trace.last_row_pre).abs().max().item() <= 1e-5
        assert torch.equal(g.trace.image_cols, r.trace.image_cols)
    # rows about one image share one prefix: 2 images, 2 stored prefixes per stream (VCD adds its noised stream);
    # a text-only stream decoded as rows keeps its rows' one leading text (the template before the image), no image
    text_only = [key for key in vlm.prefix_store.entries if key[0] == TEXT_ONLY_TAG]
    assert all(key[1] == "" for key in text_only)
    assert len(text_only) == ("text_only" in vf.METHODS[name].side_streams)
    assert sorted(set(_stored_images(vlm)) - {""}) == sorted({_fingerprint(image), _fingerprint(other_image)})
    assert len(vlm.prefix_store) - len(text_only) == 2 * _stored_streams(name)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_question_per_call_reuses_the_previous_calls_prefix(family, tiny_vlms, image, other_image):
    vlm = tiny_vlms[family]
    images = _images(image, other_image)
    ref = [vlm.answer(im, q, max_new_tokens=TOKENS, share_prefix=False) for im, q in zip(images, QUESTIONS)]
    vlm.prefix_store.clear()
    got = [vlm.answer(im, q, max_new_tokens=TOKENS) for im, q in zip(images, QUESTIONS)]
    assert_same_answers(got, ref)
    if not _shares(vlm, images):
        assert_nothing_shared(got)
        return
    # only question 1 follows a call about the same image; a call keeps only the prefixes it used
    hits = [False, True, False, False, False]
    for g, r, hit in zip(got, ref, hits):
        prompt = r.cost["prefill_tokens"]  # the whole prompt, once
        shared = g.cost["shared_prefix_tokens"]
        assert r.cost["shared_prefix_tokens"] == 0
        assert len(g.layout.image_positions) < shared < prompt
        # the prompt (or only its question when the prefix is stored), each token once
        assert g.cost["prefill_tokens"] == (prompt - shared if hit else prompt)
    assert got[1].cost["prefill_tokens"] < got[0].cost["prefill_tokens"]


@pytest.mark.parametrize("family", FAMILIES)
def test_kept_prompts_rerun_only_the_last_prompt_token(family, tiny_vlms, image, other_image):
    vlm = tiny_vlms[family]
    images = _images(image, other_image)
    # every sharing method (the plain model among them), then again each one with an image stream of its own (VCD's
    # noised image: its prompts are kept too)
    names = [*SHARING, *[n for n in SHARING if "other_image" in vf.METHODS[n].side_streams]]
    assert names[0] != "baseline"  # the plain model, too, starts from kept prompts
    sequence = [_method(vlm, images, name) for name in names]
    kwargs = dict(options=OPTIONS, max_new_tokens=TOKENS)
    refs = [vlm.answer_batch(images, QUESTIONS, m, share_prefix=False, **kwargs) for m in sequence]
    subset = [4, 0]  # fewer rows, other order: each row finds its own kept prompt
    sub_images, sub_questions = [images[i] for i in subset], [QUESTIONS[i] for i in subset]
    other_edit = vf.method("scaling_vis", alpha=1.5)
    sub_ref = vlm.answer_batch(sub_images, sub_questions, other_edit, share_prefix=False, max_new_tokens=TOKENS)
    text_only = vlm.prepare(images, QUESTIONS).text_only_stream().input_ids.shape[1]  # its own prefill, never kept
    vlm.prefix_store.clear()
    vlm.prefix_store.keep_prompts = True
    try:
        got = [vlm.answer_batch(images, QUESTIONS, m, **kwargs) for m in sequence]
        store_size = len(vlm.prefix_store)
        sub = vlm.answer_batch(sub_images, sub_questions, other_edit, max_new_tokens=TOKENS)
    finally:
        vlm.prefix_store.keep_prompts = False
    for g, r in zip(got, refs):
        assert_same_answers(g, r)
    assert_same_answers(sub, sub_ref)
    if not _shares(vlm, images):  # no prompt kept: each call prefills whole
        assert store_size == 0 and sub[0].cost["prefill_tokens"] == sub_ref[0].cost["prefill_tokens"]
        assert_nothing_shared(sub, *got)
        return
    assert sub[0].cost["prefill_tokens"] == 1
    # the first call and the first call of an image stream (VCD's noised image) prefill; every later one starts from
    # kept prompts and re-runs the last prompt token only (a text-only stream adds its own prompt's prefill)
    seen_streams = set()
    for i, (name, method, answers) in enumerate(zip(names, sequence, got)):
        streams = vf.METHODS[name].side_streams
        kept = i > 0 and not ({"other_image"} & streams) - seen_streams
        seen_streams |= streams
        if method.prefix_split == "image":  # it edits every row after the image: the question runs again, edited
            assert answers[0].cost["prefill_tokens"] > 1 and answers[0].cost["shared_prefix_tokens"] > 0, name
        elif kept:
            assert answers[0].cost["prefill_tokens"] == 1 + (text_only if "text_only" in streams else 0), name
        else:
            assert answers[0].cost["prefill_tokens"] > 1, name
    # per stream (clean and noised): 2 image prefixes and 5 whole prompts
    assert store_size == max(_stored_streams(n) for n in names) * (2 + len(QUESTIONS))


@pytest.mark.parametrize("family", QWEN_AND_LLAVA)
def test_store_keeps_only_what_the_last_call_used(family, tiny_vlms, image, other_image):
    vlm = tiny_vlms[family]
    a, b = _fingerprint(image), _fingerprint(other_image)
    vlm.prefix_store.clear()
    vlm.answer_batch([image, image], QUESTIONS[:2], max_new_tokens=1)
    assert _stored_images(vlm) == [a]  # two questions, one prefix
    vlm.answer_batch([image, other_image], QUESTIONS[:2], max_new_tokens=1)
    assert sorted(_stored_images(vlm)) == sorted([a, b])
    vlm.answer_batch([other_image], QUESTIONS[:1], max_new_tokens=1)
    assert _stored_images(vlm) == [b]
    vlm.answer(image, QUESTIONS[3], max_new_tokens=1)
    assert _stored_images(vlm) == [a]


@pytest.mark.parametrize("family", QWEN_AND_LLAVA)
def test_vea_does_not_share(family, tiny_vlms, image, other_image):
    vlm = tiny_vlms[family]
    images = _images(image, other_image)[:3]
    vlm.prefix_store.clear()
    off = vlm.answer_batch(images, QUESTIONS[:3], vf.method("vea"), max_new_tokens=TOKENS, share_prefix=False)
    on = vlm.answer_batch(images, QUESTIONS[:3], vf.method("vea"), max_new_tokens=TOKENS, share_prefix=True)
    assert len(vlm.prefix_store) == 0
    for x, y in zip(on, off):
        assert x.text == y.text
        assert torch.equal(x.first_token_logits, y.first_token_logits)
        assert x.cost["shared_prefix_tokens"] == y.cost["shared_prefix_tokens"] == 0
        assert x.cost["prefill_tokens"] == y.cost["prefill_tokens"]


class _Recording(Baseline):
    """The baseline, noting the sharing plan of the batch it runs."""

    seen: list

    def run(self, batch, *, max_new_tokens):
        self.seen.append(batch.runner.sharing)
        return super().run(batch, max_new_tokens=max_new_tokens)


class _NotSharing(_Recording):
    shares_prefix = False


def test_method_that_cannot_share_gets_an_unshared_batch(tiny_vlms, image, other_image):
    vlm = tiny_vlms["qwen2_vl"]
    sharing, not_sharing = _Recording(Params()), _NotSharing(Params())
    sharing.seen, not_sharing.seen = [], []
    out = vlm.answer_batch([image, other_image], QUESTIONS[:2], not_sharing, max_new_tokens=1)
    assert not_sharing.seen == [None]
    assert [a.cost["shared_prefix_tokens"] for a in out] == [0, 0]
    out = vlm.answer_batch([image, other_image], QUESTIONS[:2], sharing, max_new_tokens=1)
    assert sharing.seen[0] is not None and sharing.seen[0].store is vlm.prefix_store
    assert [a.cost["shared_prefix_tokens"] for a in out] == sharing.seen[0].prefix_lengths
    vlm.answer_batch([image], QUESTIONS[:1], sharing, max_new_tokens=1, share_prefix=False)
    assert sharing.seen[1] is None


# --- pure units ------------------------------------------------------------------------------------------------------

IMG = 9


def test_split_layout_aligns_prefix_ends_and_last_tokens():
    # row 0: 7 tokens, prefix 4 (bos, 2 image, template); row 1: 6 tokens (1 left padding), prefix 5, suffix 1
    ids = torch.tensor([[1, IMG, IMG, 2, 5, 6, 7],
                        [0, 1, IMG, IMG, IMG, 2, 8]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1],
                         [0, 1, 1, 1, 1, 1, 1]])
    mm = (ids == IMG).long()
    pixels = torch.randn(2, 3)
    inputs = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": mm, "pixel_values": pixels}
    out, C = split_layout(inputs, [4, 5], IMG)
    assert C == 5
    assert out["pixel_values"] is pixels  # not per token: stays
    # prefix 4 ends at column C; suffix 3 fills the end → width C + 3
    assert out["input_ids"].tolist()[0][1:] == [1, IMG, IMG, 2, 5, 6, 7]
    assert out["attention_mask"].tolist() == [[0, 1, 1, 1, 1, 1, 1, 1],
                                              [1, 1, 1, 1, 1, 0, 0, 1]]
    assert out["input_ids"][1].tolist()[:5] == [1, IMG, IMG, IMG, 2]
    assert out["input_ids"][1, -1].item() == 8
    new_mask = out["attention_mask"].bool()
    for b, p in enumerate([4, 5]):
        real = new_mask[b].nonzero().squeeze(-1)
        assert real[p - 1].item() == C - 1  # the prefix ends at column C − 1
        assert real[-1].item() == out["input_ids"].shape[1] - 1  # the last token in the last column
        # the same real tokens in the same order
        assert out["input_ids"][b][new_mask[b]].tolist() == ids[b][mask[b].bool()].tolist()
        assert out["mm_token_type_ids"][b][new_mask[b]].tolist() == mm[b][mask[b].bool()].tolist()
    # padding is never an image token, and carries no image type
    assert not (out["input_ids"][~new_mask] == IMG).any()
    assert (out["mm_token_type_ids"][~new_mask] == 0).all()
    # positions from the mask: every real token keeps its position
    def positions(row_mask):
        return (row_mask.long().cumsum(-1) - 1)[row_mask.bool()].tolist()

    for b in range(2):
        assert positions(out["attention_mask"][b]) == positions(mask[b])
    assert leading_padding(out["attention_mask"]).tolist() == [1, 0]


def test_leading_padding_counts_only_leading_columns():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 0, 1], [1, 0, 0, 1]])
    assert leading_padding(mask).tolist() == [2, 0, 1, 0]


def test_store_end_call_keeps_only_what_the_call_used():
    entry = StoredPrefix(layers=[], length=0)
    store = PrefixStore()
    store.put("a", entry)
    store.put("b", entry)
    store.end_call()
    assert set(store.entries) == {"a", "b"}  # stored in the call: used
    assert store.get("a") is entry
    assert store.get("missing") is None
    store.end_call()
    assert set(store.entries) == {"a"}
    assert store.entries.get("a") is entry  # a plain look at the dict is no use
    store.end_call()
    assert len(store) == 0
    store.put("c", entry)
    store.clear()
    store.end_call()
    assert len(store) == 0


@pytest.mark.parametrize("family", QWEN_AND_LLAVA + ["llava_next"])
def test_shared_prefix_length_on_real_prompts(family, tiny_vlms, image):
    adapter = tiny_vlms[family].adapter
    rows = [adapter.encode([image], [q])["input_ids"][0].tolist() for q in ("Is the cup red?", "Where is the dog?")]
    lengths = [adapter.shared_prefix_length(r) for r in rows]
    assert lengths[0] == lengths[1]
    shared = lengths[0]
    for r in rows:
        last_image = len(r) - 1 - r[::-1].index(adapter.image_token_id)
        assert last_image + 1 <= shared < len(r)
        assert adapter.image_token_id not in r[shared:]
    # the two questions share exactly that many leading tokens
    common = next(i for i, (x, y) in enumerate(zip(*rows)) if x != y)
    assert common == shared
    # the template text after the image belongs to the prefix
    last_image = len(rows[0]) - 1 - rows[0][::-1].index(adapter.image_token_id)
    after = adapter.template_after_image
    assert len(after) > 0 and tuple(rows[0][last_image + 1:last_image + 1 + len(after)]) == after
    assert shared == last_image + 1 + len(after)
    # at least one token is always left to the question
    assert adapter.shared_prefix_length(rows[0][:last_image + 1]) == last_image
