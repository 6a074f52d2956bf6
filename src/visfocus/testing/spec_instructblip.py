"""Tiny InstructBLIP fixture (ViT + Q-Former + Llama, as Salesforce/instructblip-vicuna-7b): a 56 px image (224 in
the real checkpoint), patch 14, a 2-layer Q-Former with 32 query tokens (as the real one) that become 32 ``<image>``
tokens before BOS, whatever the picture's size. The processor is the real ``InstructBlipProcessor``: the PIL BLIP
image processor; a Llama-style BPE tokenizer (``<unk> <s> </s>`` first, BOS added, ``<image>`` and ``<pad>`` after
the BPE) that names no ``image_token`` (the processor keeps ``<image>`` itself, and fails on a tokenizer that names
one in transformers 5.23-5.25); and, as the real checkpoint's ``qformer_tokenizer`` is a ``BertTokenizer``, a small
lower-casing WordPiece ``BertTokenizerFast`` built in code from the fixture corpus' words. The real checkpoint has no
chat template (the prompt is the question), and ``InstructBlipProcessor`` keeps none; the fixture's tokenizer has one
that renders just the user's text, so that a chat prompt is that too."""

from __future__ import annotations

from typing import Any

import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from visfocus.testing.fixtures import (
    _LLAVA_TOKENIZER,
    LLAVA_SPECIALS,
    TEXT,
    VISION,
    FixtureSpec,
    _corpus,
    _llava_generation_ids,
    register_fixture,
)

INSTRUCTBLIP_IMAGE = 56  # px (224 in the real checkpoint)
INSTRUCTBLIP_PATCH = 14
INSTRUCTBLIP_QUERIES = 32  # as the real checkpoint
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# The user's text only: what the real checkpoint's prompt is (it has no chat template).
_INSTRUCTBLIP_TEMPLATE = (
    "{%- for message in messages if message['role'] == 'user' -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}{{ item['text'] }}{%- endfor -%}"
    "{%- endif -%}{%- endfor -%}"
)


def qformer_tokenizer() -> transformers.BertTokenizerFast:
    """A lower-casing WordPiece tokenizer over the corpus' words and single characters, with BERT's specials and
    its ``[CLS] … [SEP]`` post-processing (the real Q-Former tokenizer is bert-base-uncased's)."""
    words = sorted({w.lower().strip(".,?!") for line in _corpus() for w in line.split()} - {""})
    vocab = list(dict.fromkeys([*BERT_SPECIALS, *"abcdefghijklmnopqrstuvwxyz0123456789.,?!'", *words]))
    wordpiece = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    wordpiece.decoder = decoders.WordPiece()
    return transformers.BertTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]",
                                          cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def _instructblip(family: str, tok: Any) -> tuple[Any, Any]:
    """Config and processor of an InstructBLIP fixture."""
    qformer_tok = qformer_tokenizer()
    vision = transformers.InstructBlipVisionConfig(
        hidden_size=VISION["hidden"], intermediate_size=VISION["intermediate"], num_hidden_layers=VISION["depth"],
        num_attention_heads=VISION["heads"], image_size=INSTRUCTBLIP_IMAGE, patch_size=INSTRUCTBLIP_PATCH)
    qformer = transformers.InstructBlipQFormerConfig(
        vocab_size=len(qformer_tok), hidden_size=VISION["hidden"], num_hidden_layers=2,
        num_attention_heads=VISION["heads"], intermediate_size=VISION["intermediate"], max_position_embeddings=64,
        cross_attention_frequency=1, pad_token_id=qformer_tok.pad_token_id)
    text = transformers.LlamaConfig(**TEXT, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, rms_norm_eps=1e-6,
                                    tie_word_embeddings=False)
    config = transformers.InstructBlipConfig(
        vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
        num_query_tokens=INSTRUCTBLIP_QUERIES, image_token_index=tok.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False)
    ip = transformers.BlipImageProcessorPil(size={"height": INSTRUCTBLIP_IMAGE, "width": INSTRUCTBLIP_IMAGE})
    proc = transformers.InstructBlipProcessor(ip, tok, qformer_tok, num_query_tokens=INSTRUCTBLIP_QUERIES)
    return config, proc


register_fixture(FixtureSpec(
    family="instructblip", model_class="InstructBlipForConditionalGeneration", build=_instructblip,
    chat_template=_INSTRUCTBLIP_TEMPLATE, bpe_specials=tuple(LLAVA_SPECIALS), added_specials=("<image>", "<pad>"),
    tokenizer_kwargs={k: v for k, v in _LLAVA_TOKENIZER.items() if k != "image_token"},
    generation_ids=_llava_generation_ids, real_processor="InstructBlipProcessor",
    image_tokens_224x160=INSTRUCTBLIP_QUERIES,
    prompt_marks=("Where is the cup", "in relation to the table?"),
    image_placeholder=""))
