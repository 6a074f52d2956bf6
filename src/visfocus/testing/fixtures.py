"""Tiny random-weight vision-language models of every supported family, saved like real checkpoints.

Each fixture folder holds a model (``save_pretrained``) and its real processor (image processor + a byte-level BPE
tokenizer trained in code + chat template), so ``AutoModelForImageTextToText.from_pretrained(dir)`` and
``visfocus.models.processor.load_processor(dir)`` load it and the processor produces the family's real image-token
layout.  No download, no internet; a fixture builds in well under a second and is < 1 MB on disk.

A family's fixture is one ``FixtureSpec`` registered with ``register_fixture``; ``FAMILIES`` lists the registered
families, and every family-parametrised test runs over it.
"""

from __future__ import annotations

import atexit
import importlib
import json
import pkgutil
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# Decoder size shared by all families: hidden 64 = 4 heads x head_dim 16, 2 KV heads (GQA), 2 layers.
TEXT = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 1024}
# Qwen image limits, in image tokens (after the 2x2 merge); the processors take them as pixels.
QWEN_MIN_TOKENS, QWEN_MAX_TOKENS = 4, 128
LLAVA_IMAGE_SIZE = 84  # LLaVA-1.5: one 84x84 view, patch 14 -> 6x6 = 36 image tokens
LLAVA_NEXT_IMAGE_SIZE = 56  # LLaVA-NeXT: 56x56 base view + anyres tiles, patch 14 -> 4x4 per view
LLAVA_NEXT_PINPOINTS = [[56, 56], [56, 112], [112, 56], [112, 112]]
VISION = {"depth": 2, "hidden": 32, "intermediate": 64, "heads": 2}

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
LLAVA_SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in Llama; <image>, <pad> follow the BPE as in llava-hf

_QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' and DEFAULT_SYSTEM -%}"
    "{{ '<|im_start|>system\\n' + DEFAULT_SYSTEM + '<|im_end|>\\n' }}{%- endif -%}"
    "{%- for message in messages -%}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item['type'] == 'video' or 'video' in item -%}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{ '<|im_end|>\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
# LLaVA-1.5 / LLaVA-NeXT (vicuna) style: "USER: <image>\n{text} ASSISTANT:"
_LLAVA_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ (message['content'] if message['content'] is string else message['content'][0]['text']) + ' ' }}"
    "{%- else -%}{{ message['role'].upper() + ': ' }}"
    "{%- if message['content'] is string -%}{{ message['content'] + ' ' }}{%- else -%}"
    "{%- for item in message['content'] if item['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}{{ item['text'] + ' ' }}{%- endfor -%}"
    "{%- endif -%}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

_OBJECTS = ["cup", "table", "dog", "cat", "ball", "chair", "book", "box", "car", "tree", "bird", "plate", "lamp",
            "bed", "man", "woman", "bowl", "laptop"]
_RELATIONS = ["on", "under", "above", "below", "left of", "right of", "in front of", "behind", "next to", "near",
              "inside", "on top of", "at the left of", "at the right of"]
_EXTRA = [
    "Yes.", "No.", "True.", "False.", "Yes, it is.", "No, it is not.", "The answer is yes.", "The answer is no.",
    "Answer with yes or no.", "Answer with True or False.", "Describe the image.", "What is in the image?",
    "Is there a cat in the image?", "Is there a dog in the image?", "Where is the cup?", "Where is the dog?",
    "Is the statement true or false?", "Answer with a single word.", "left", "right", "top", "bottom",
    "You are a helpful assistant.", "Look at the image and answer the question.", "A photo of a red cup.",
    "A blue ball and a green box.", "There is a small white dog.", "The image shows a kitchen table.",
]


def _corpus() -> list[str]:
    """About 100 short English sentences about objects and spatial relations (deterministic)."""
    lines = list(_EXTRA)
    n = len(_OBJECTS)
    for i, rel in enumerate(_RELATIONS):
        for j in range(2):
            a, b = _OBJECTS[(i + 5 * j) % n], _OBJECTS[(3 * i + 7 * j + 1) % n]
            lines += [f"The {a} is {rel} the {b}.", f"Is the {a} {rel} the {b}?"]
        lines.append(f"Where is the {_OBJECTS[i % n]}? It is {rel} the {_OBJECTS[(i + 9) % n]}.")
    # Repeated so that chat-template words and yes/no answers become single tokens.
    return lines + ["user", "assistant", "system", "USER: ASSISTANT:", "Answer with yes or no."] * 4


@dataclass(frozen=True)
class FixtureSpec:
    """How to build one family's tiny fixture (registered in ``FIXTURES`` with ``register_fixture``).

    ``build(family, tokenizer)`` returns the model config and the processor; the tokenizer is a byte-level BPE with
    ``bpe_specials`` trained in first (lowest ids), ``added_specials`` added after it, ``chat_template`` and
    ``tokenizer_kwargs``. ``generation_ids(tokenizer)`` gives the generation config's bos/eos ids. The last fields
    are what the fixture tests pin: the processor class saved on disk, the image tokens of a 224 × 160 picture and
    two strings of the chat prompt (one it contains, the one it ends with).
    """

    family: str
    model_class: str
    build: Callable[[str, Any], tuple[Any, Any]]
    chat_template: str
    bpe_specials: tuple[str, ...]
    added_specials: tuple[str, ...]
    tokenizer_kwargs: dict[str, Any]
    generation_ids: Callable[[Any], dict[str, Any]]
    real_processor: str
    image_tokens_224x160: int
    prompt_marks: tuple[str, str]
    video_processor: str | None = None  # the video processor class a torchvision machine builds (Qwen)
    # What the chat template writes for one image ("" for none: InstructBLIP's prompt is the question); the text-only
    # references of the tests cut it out of the prompt text, independently of the adapter's ``text_only_ids``.
    image_placeholder: str = "<image>"


FIXTURES: dict[str, FixtureSpec] = {}


def register_fixture(spec: FixtureSpec) -> FixtureSpec:
    """Make ``spec`` the fixture of its family; the family joins ``FAMILIES`` (and every family-parametrised test)."""
    FIXTURES[spec.family] = spec
    return spec


def _spec(family: str) -> FixtureSpec:
    if family not in FIXTURES:
        raise ValueError(f"unknown family {family!r}; choose one of: {', '.join(FIXTURES)}")
    return FIXTURES[family]


def make_tokenizer(family: str, corpus: list[str] | None = None, vocab_size: int = 400,
                   max_length: int = TEXT["max_position_embeddings"]) -> transformers.PreTrainedTokenizerFast:
    """A ``vocab_size``-token byte-level BPE trained on ``corpus`` (default: short English sentences about objects and
    relations), with the family's special tokens and chat template."""
    spec = _spec(family)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(spec.bpe_specials),
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_corpus() if corpus is None else corpus, trainer=trainer)
    bpe.add_special_tokens(list(spec.added_specials))  # after the BPE, in the real order
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, **spec.tokenizer_kwargs, padding_side="left",
                                               chat_template=spec.chat_template)
    tok.model_max_length = max_length
    return tok


def _qwen(family: str, tok: Any) -> tuple[Any, Any]:

    """Config and (image-only) processor of a Qwen2/2.5/3-VL fixture."""
    from visfocus.models.processor import FALLBACK_PROCESSORS, NO_VIDEO_PROCESSORS

    v3 = family == "qwen3_vl"
    patch, merge = (16, 2) if v3 else (14, 2)
    px = (patch * merge) ** 2
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    text = dict(TEXT, vocab_size=len(tok), bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, rms_norm_eps=1e-6)
    vis = {"depth": VISION["depth"], "num_heads": VISION["heads"], "patch_size": patch, "spatial_merge_size": merge,
           "temporal_patch_size": 2, "initializer_range": 0.02}
    if v3:
        text.update(head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                                                  "mrope_section": [4, 2, 2], "mrope_interleaved": True})
        vis.update(hidden_size=VISION["hidden"], intermediate_size=VISION["intermediate"], out_hidden_size=64,
                   num_position_embeddings=64, deepstack_visual_indexes=[0])
        mean = std = [0.5, 0.5, 0.5]
    else:
        text.update(rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]})
        if family == "qwen2_5_vl":
            vis.update(hidden_size=VISION["hidden"], intermediate_size=VISION["intermediate"], out_hidden_size=64,
                       window_size=2 * patch * merge, fullatt_block_indexes=[VISION["depth"] - 1])
        else:
            vis.update(embed_dim=VISION["hidden"], hidden_size=64, mlp_ratio=2)
        mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    cfg_cls = {"qwen3_vl": transformers.Qwen3VLConfig, "qwen2_5_vl": transformers.Qwen2_5_VLConfig,
               "qwen2_vl": transformers.Qwen2VLConfig}[family]
    config = cfg_cls(text_config=text, vision_config=vis, tie_word_embeddings=False, **ids)
    size = {"shortest_edge": QWEN_MIN_TOKENS * px, "longest_edge": QWEN_MAX_TOKENS * px}
    image_processor = transformers.Qwen2VLImageProcessorPil(size=size, patch_size=patch, merge_size=merge,
                                                            temporal_patch_size=2, image_mean=mean, image_std=std)
    proc = NO_VIDEO_PROCESSORS[FALLBACK_PROCESSORS[family]](image_processor, tok, chat_template=tok.chat_template)
    return config, proc


def _llava(family: str, tok: Any) -> tuple[Any, Any]:
    """Config and processor of a LLaVA-1.5 (CLIP + Llama) or LLaVA-NeXT (anyres) fixture."""
    nxt = family == "llava_next"
    side, patch = (LLAVA_NEXT_IMAGE_SIZE if nxt else LLAVA_IMAGE_SIZE), 14
    vision = transformers.CLIPVisionConfig(hidden_size=VISION["hidden"], intermediate_size=VISION["intermediate"],
                                           num_hidden_layers=VISION["depth"], num_attention_heads=VISION["heads"],
                                           image_size=side, patch_size=patch, projection_dim=VISION["hidden"])
    text = transformers.LlamaConfig(**TEXT, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, rms_norm_eps=1e-5)
    common = {"vision_config": vision, "text_config": text, "image_token_index": tok.convert_tokens_to_ids("<image>"),
              "image_seq_length": (side // patch) ** 2, "vision_feature_select_strategy": "default",
              "vision_feature_layer": -2, "tie_word_embeddings": False}
    ip_kwargs = {"size": {"shortest_edge": side}, "crop_size": {"height": side, "width": side}}
    proc_kwargs = {"patch_size": patch, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1,
                   "chat_template": tok.chat_template}
    if nxt:
        config = transformers.LlavaNextConfig(**common, image_grid_pinpoints=LLAVA_NEXT_PINPOINTS)
        ip = transformers.LlavaNextImageProcessorPil(**ip_kwargs, image_grid_pinpoints=LLAVA_NEXT_PINPOINTS)
        return config, transformers.LlavaNextProcessor(ip, tok, **proc_kwargs)
    config = transformers.LlavaConfig(**common)
    return config, transformers.LlavaProcessor(transformers.CLIPImageProcessorPil(**ip_kwargs), tok, **proc_kwargs)


LLAVA_ONEVISION_IMAGE_SIZE = 56  # LLaVA-OneVision: 56x56 SigLIP base view + anyres tiles, patch 14 -> 4x4 per view
# Up to 4 x 4 tiles, as the real checkpoint's 1..6 x 1..6 tiles of 384 px: a 224 x 160 picture gets 3 x 4 tiles, more
# than "anyres_max_9" allows, so its unpadded 12 x 16 token grid is also shrunk (bilinear) to 10 x 13.
LLAVA_ONEVISION_PINPOINTS = [[56 * i, 56 * j] for i in range(1, 5) for j in range(1, 5)]
ONEVISION_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
# Qwen2 chat style of llava-hf/llava-onevision-qwen2-*-hf:
# "<|im_start|>user <image>\n{text}<|im_end|>\n<|im_start|>assistant\n"
_ONEVISION_TEMPLATE = (
    "{%- for message in messages -%}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
    "{%- for item in message['content'] if item['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'video' -%}{{ '<video>\\n' }}{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}{{ item['text'] }}{%- endfor -%}"
    "{%- endif -%}{{ '<|im_end|>\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def _llava_onevision(family: str, tok: Any) -> tuple[Any, Any]:
    """Config and processor of a LLaVA-OneVision fixture (SigLIP + Qwen2, anyres-max grid with newline tokens)."""
    side, patch = LLAVA_ONEVISION_IMAGE_SIZE, 14
    vision = transformers.SiglipVisionConfig(hidden_size=VISION["hidden"], intermediate_size=VISION["intermediate"],
                                             num_hidden_layers=VISION["depth"], num_attention_heads=VISION["heads"],
                                             image_size=side, patch_size=patch)
    text = transformers.Qwen2Config(**TEXT, vocab_size=len(tok), bos_token_id=tok.pad_token_id,
                                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, rms_norm_eps=1e-6,
                                    rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
    config = transformers.LlavaOnevisionConfig(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"), vision_feature_select_strategy="full",
        vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9", image_grid_pinpoints=LLAVA_ONEVISION_PINPOINTS,
        tie_word_embeddings=False)
    ip = transformers.LlavaOnevisionImageProcessorPil(
        size={"height": side, "width": side}, image_grid_pinpoints=LLAVA_ONEVISION_PINPOINTS,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    from visfocus.models.llava_onevision import LlavaOnevisionProcessorNoVideo

    proc = LlavaOnevisionProcessorNoVideo(
        ip, tok, num_image_tokens=(side // patch) ** 2, vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9", chat_template=tok.chat_template)
    return config, proc


def _qwen_template(family: str) -> str:
    return _QWEN_TEMPLATE.replace("DEFAULT_SYSTEM",
                                  "'You are a helpful assistant.'" if family != "qwen3_vl" else "''")


def _qwen_generation_ids(tok: Any) -> dict[str, Any]:
    """As the real Qwen-VL generation configs: stop on <|im_end|> or <|endoftext|>."""
    return {"bos_token_id": tok.pad_token_id, "eos_token_id": [tok.eos_token_id, tok.pad_token_id]}


def _llava_generation_ids(tok: Any) -> dict[str, Any]:
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}


_QWEN_TOKENIZER = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "extra_special_tokens": QWEN_SPECIALS,
                   "image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                   "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}
_LLAVA_TOKENIZER = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                    "extra_special_tokens": ["<image>"], "add_bos_token": True, "image_token": "<image>"}
_QWEN_MARKS = ("<|vision_start|><|image_pad|><|vision_end|>", "<|im_start|>assistant\n")

for _family, _model, _processor, _video, _tokens in [
    ("qwen3_vl", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", "Qwen3VLVideoProcessor", 35),
    ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor", 48),
    ("qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", "Qwen2VLVideoProcessor", 48),
]:
    register_fixture(FixtureSpec(
        family=_family, model_class=_model, build=_qwen, chat_template=_qwen_template(_family), bpe_specials=(),
        added_specials=tuple(QWEN_SPECIALS), tokenizer_kwargs=_QWEN_TOKENIZER, generation_ids=_qwen_generation_ids,
        real_processor=_processor, image_tokens_224x160=_tokens, prompt_marks=_QWEN_MARKS, video_processor=_video,
        image_placeholder="<|vision_start|><|image_pad|><|vision_end|>"))
for _family, _model, _processor, _tokens in [("llava", "LlavaForConditionalGeneration", "LlavaProcessor", 36),
                                             ("llava_next", "LlavaNextForConditionalGeneration", "LlavaNextProcessor",
                                              70)]:
    register_fixture(FixtureSpec(
        family=_family, model_class=_model, build=_llava, chat_template=_LLAVA_TEMPLATE,
        bpe_specials=tuple(LLAVA_SPECIALS), added_specials=("<image>", "<pad>"), tokenizer_kwargs=_LLAVA_TOKENIZER,
        generation_ids=_llava_generation_ids, real_processor=_processor, image_tokens_224x160=_tokens,
        prompt_marks=("USER: <image>\n", " ASSISTANT:")))
register_fixture(FixtureSpec(
    family="llava_onevision", model_class="LlavaOnevisionForConditionalGeneration", build=_llava_onevision,
    chat_template=_ONEVISION_TEMPLATE, bpe_specials=(), added_specials=tuple(ONEVISION_SPECIALS),
    tokenizer_kwargs={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                      "extra_special_tokens": ["<|im_start|>", "<|im_end|>", "<image>", "<video>"],
                      "image_token": "<image>", "video_token": "<video>"},
    generation_ids=_qwen_generation_ids, real_processor="LlavaOnevisionProcessor", image_tokens_224x160=156,
    video_processor="LlavaOnevisionVideoProcessor",
    prompt_marks=("<|im_start|>user <image>\n", "<|im_end|>\n<|im_start|>assistant\n")))



def _import_spec_modules() -> None:
    """A family's spec may live in a module of its own, ``visfocus/testing/spec_<family>.py`` (it imports
    ``FixtureSpec`` and ``register_fixture`` from here): every such module is imported now, before ``FAMILIES``."""
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if info.name.startswith("spec_"):
            importlib.import_module(f"visfocus.testing.{info.name}")


_import_spec_modules()
# Every family with a fixture spec, in registration order: what family-parametrised tests run over.
FAMILIES: tuple[str, ...] = tuple(FIXTURES)


def _redraw(model: torch.nn.Module, std: float, gen: torch.Generator) -> None:
    """Re-draw every >=2-D weight except embedding tables with N(0, std): attention far from uniform."""
    skip = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.dim() >= 2 and id(p) not in skip:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)


def add_video_entry(out: Path, family: str, image_processor: Any) -> None:
    """Add to ``out/processor_config.json`` the video processor config a torchvision machine needs to build the
    real processor (the saved processor is image-only)."""
    d = image_processor.to_dict()
    keys = ("patch_size", "temporal_patch_size", "merge_size", "size", "image_mean", "image_std")
    path = out / "processor_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["video_processor"] = {"video_processor_type": _spec(family).video_processor,
                               **{k: d[k] for k in keys if k in d}}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_tiny(family: str, out_dir: str | Path, *, seed: int = 0, weight_std: float = 0.15) -> Path:
    """Build the tiny ``family`` fixture, save model + processor into ``out_dir`` and return it.

    After the usual init, every >=2-D weight except embedding tables is re-drawn from N(0, ``weight_std``) so that
    attention is far from uniform and attention edits visibly move the logits.  Deterministic given ``seed``.
    """
    spec = _spec(family)
    out = Path(out_dir)
    tok = make_tokenizer(family)
    config, proc = spec.build(family, tok)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, spec.model_class)(config).eval()
    _redraw(model, weight_std, torch.Generator().manual_seed(seed))
    model.generation_config = transformers.GenerationConfig(**spec.generation_ids(tok), pad_token_id=tok.pad_token_id,
                                                            do_sample=False)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    if spec.video_processor:
        add_video_entry(out, family, proc.image_processor)
    return out


_CACHE: dict[str, Path] = {}
_CACHE_ROOT: list[Path] = []


def tiny_model_dir(family: str) -> Path:
    """Folder with the ``family`` fixture (seed 0), built once per process into a temporary cache (removed at exit)."""
    if family not in _CACHE:
        if not _CACHE_ROOT:
            _CACHE_ROOT.append(Path(tempfile.mkdtemp(prefix="visfocus-tiny-")))
            atexit.register(shutil.rmtree, _CACHE_ROOT[0], ignore_errors=True)
        _CACHE[family] = build_tiny(family, _CACHE_ROOT[0] / family)
    return _CACHE[family]


def make_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic RGB picture: a soft background with a few coloured rectangles and circles."""
    gen = torch.Generator().manual_seed(seed)

    def rand(lo: int, hi: int) -> int:
        return int(torch.randint(lo, max(hi, lo + 1), (1,), generator=gen))

    img = Image.new("RGB", (width, height), (rand(170, 240), rand(170, 240), rand(170, 240)))
    draw = ImageDraw.Draw(img)
    palette = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (240, 200, 30), (150, 60, 180)]
    for k in range(4):
        w, h = rand(width // 6, width // 2), rand(height // 6, height // 2)
        x, y = rand(0, width - w), rand(0, height - h)
        colour = palette[(seed + k) % len(palette)]
        (draw.rectangle if k % 2 == 0 else draw.ellipse)([x, y, x + w, y + h], fill=colour)
    return img
