"""The runners on every supported family (parametrised over the fixture registry): LoRA fine-tuning, the layer profile
VEA reads, the heatmap command, the app's Explorer and the lmms-eval plugin each run on each family's tiny model and
give what the public API gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import visfocus as vf
from visfocus import profile_layers as profiling
from visfocus.heatmap import main as heatmap_main
from visfocus.testing import FAMILIES, make_image

QUESTION = "Is the cup on the table? Answer with yes or no."


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_supervise_exactly_the_answer_and_the_end_of_turn(family, tiny_vlms, image):
    from visfocus.train.labels import IGNORE_INDEX, build_example

    adapter = tiny_vlms[family].adapter
    example = build_example(adapter, image, QUESTION, "yes")
    labels = example["labels"][0]  # (S,)
    kept = labels[labels != IGNORE_INDEX].tolist()
    text = adapter.processor.tokenizer.decode(kept)
    assert text.strip() == "yes" + adapter.end_of_turn
    assert kept[-1] == adapter.processor.tokenizer.convert_tokens_to_ids(adapter.end_of_turn)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_finetuning_trains_adapters_on_every_family(family, tiny_dirs, tmp_path):
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    from visfocus.train import FinetuneConfig
    from visfocus.train.finetune import finetune

    config = FinetuneConfig(model=str(tiny_dirs[family]), task="synthetic_spatial", output_dir=str(tmp_path / "ft"),
                            limit=2, batch_size=2, max_steps=1, lr=1e-3, lora=True, lora_r=4, lora_alpha=8,
                            freeze_vision=True)
    summary = finetune(config)
    trained = load_file(f"{summary['checkpoint_dir']}/trainable.safetensors")
    assert trained and all("lora_" in name for name in trained)
    assert any(name.endswith("lora_B.default.weight") and float(value.abs().sum()) > 0
               for name, value in trained.items())  # LoRA B starts at zero: one step moved it


@pytest.mark.parametrize("family", FAMILIES)
def test_the_layer_profile_ranks_every_decoder_layer(family, tiny_vlms):
    vlm = tiny_vlms[family]
    profile = profiling.profile_layers(vlm, vf.task("synthetic_spatial"), n=2)
    scores = profile["auroc_per_layer"]
    assert len(scores) == vlm.adapter.num_layers
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert set(profile["layers"]) <= set(range(vlm.adapter.num_layers)) and profile["layers"]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_heatmap_command_draws_the_attention_over_the_photo(family, tiny_dirs, tmp_path):
    picture, out = tmp_path / "picture.png", tmp_path / "heat.png"
    make_image(96, 64, seed=4).save(picture)
    argv = ["--model", str(tiny_dirs[family]), "--image", str(picture), "--question", "Where is the red box?",
            "--max_new_tokens", "1", "--out", str(out)]
    assert heatmap_main(argv) == 0
    with Image.open(out) as drawn:
        assert drawn.format == "PNG" and np.asarray(drawn.convert("L")).std() > 10


@pytest.mark.parametrize("family", FAMILIES)
def test_the_app_answers_as_the_public_api(family, tiny_vlms, image):
    from visfocus.app.compute import Explorer

    vlm = tiny_vlms[family]
    explorer = Explorer(vlm)
    result = explorer.answer(image, QUESTION, "scaling_vis", {"alpha": 0.5}, ("yes", "no"))
    expected = vlm.answer(image, QUESTION, method=vf.method("scaling_vis", alpha=0.5),
                          max_new_tokens=explorer.max_new_tokens, options=["yes", "no"])
    assert result.text == expected.text and result.first_token == expected.first_token
    assert result.confidence == pytest.approx(expected.confidence, abs=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_lmms_eval_plugin_answers_as_the_public_api(family, tiny_dirs):
    pytest.importorskip("lmms_eval")
    from lmms_eval.api.instance import Instance

    from visfocus.integrations.lmms.model import VisFocusLmms

    record = vf.task("scenes_test")[1]
    model = VisFocusLmms(pretrained=str(tiny_dirs[family]), method="scaling_vis", device="cpu")
    model.task_dict = {"t": {"test": [{"question": record.question}]}}
    request = Instance("generate_until", (record.question, {"max_new_tokens": 3, "until": []},
                                          lambda doc: [record.image], 0, "t", "test"), 0,
                       {"task": "t", "doc_id": 0, "repeats": 1})
    expected = model.vlm.answer(record.image, record.question, model.method, max_new_tokens=3).text
    assert model.generate_until([request]) == [expected]
    with torch.no_grad():
        assert model.vlm.adapter.family == family
