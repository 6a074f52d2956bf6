"""InstructBLIP (EVA ViT + Q-Former + a Llama/Vicuna ``LlamaForCausalLM``, as Salesforce/instructblip-vicuna-7b).

The Q-Former reads the image AND the question (``qformer_input_ids``) and gives ``num_query_tokens`` (32) vectors,
projected into the language model's embedding space and placed as ``<image>`` tokens at the very start of the
prompt, before BOS: ``<image>×32 <s> question``. There is no chat template; the prompt is the question. The query
tokens show no part of the image in particular, so there is no token grid (``no_grid_reason``): attention over them
is traced per token, and everything that draws or scores attention on pixels refuses with that reason.

transformers' ``InstructBlipForConditionalGeneration`` needs ``pixel_values`` in every ``forward`` and ``generate``
and returns its own output type (no cache field); the engine continues from caches without the image and runs
text-only prompts, so the adapter gives the loaded model ``SteerableInstructBlip``'s ``forward`` / ``generate``: the
same image-feature merge, then the language model's own forward / generate (with or without the image)."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
import transformers

from visfocus.errors import VisfocusError
from visfocus.models.base import Adapter, register_adapter
from visfocus.models.layout import ImageView
from visfocus.steer.compat import cache_argument


class SteerableInstructBlip(transformers.InstructBlipForConditionalGeneration):
    """``InstructBlipForConditionalGeneration`` whose ``forward`` and ``generate`` also run without the image (a
    cache that holds it, a text-only prompt) and return the language model's outputs (logits and cache). With the
    image, the query outputs replace the ``<image>`` embeddings exactly as transformers' own forward does."""

    def _embeddings(self, input_ids, pixel_values, qformer_input_ids, qformer_attention_mask) -> torch.Tensor:
        embeds = self.get_input_embeddings()(input_ids)  # (B, S, D)
        queries = self.get_image_features(pixel_values, qformer_input_ids=qformer_input_ids,
                                          qformer_attention_mask=qformer_attention_mask,
                                          return_dict=True).pooler_output  # (B, Q, D)
        mask = self.get_placeholder_mask(input_ids, inputs_embeds=embeds)  # (B, S, 1)
        return embeds.masked_scatter(mask, queries.to(embeds.device, embeds.dtype))

    def _language_inputs(self, input_ids, pixel_values, qformer_input_ids, qformer_attention_mask, kwargs) -> dict:
        """The language model's keyword arguments: the merged embeddings when the image is given, the cache under
        the name the language model takes."""
        for name in ("cache", "past_key_values"):
            if name in kwargs:
                kwargs[cache_argument(self.language_model)] = kwargs.pop(name)
        if pixel_values is not None:
            kwargs["inputs_embeds"] = self._embeddings(input_ids, pixel_values, qformer_input_ids,
                                                       qformer_attention_mask)
        return kwargs

    def forward(self, input_ids=None, pixel_values=None, qformer_input_ids=None, qformer_attention_mask=None,
                cache=None, **kwargs):
        """The language model's forward (``CausalLMOutputWithPast``); the image merged in when given. ``cache``:
        the KV cache under either name (``past_key_values`` too)."""
        kwargs = self._language_inputs(input_ids, pixel_values, qformer_input_ids, qformer_attention_mask,
                                       {**kwargs, **({"cache": cache} if cache is not None else {})})
        if "inputs_embeds" not in kwargs:
            kwargs["input_ids"] = input_ids
        return self.language_model(**kwargs)

    @torch.no_grad()
    def generate(self, input_ids=None, pixel_values=None, qformer_input_ids=None, qformer_attention_mask=None,
                 **kwargs):
        """The language model's ``generate`` on ``input_ids`` (the returned sequences start with them), the image's
        query outputs in place of its ``<image>`` embeddings when ``pixel_values`` is given."""
        kwargs = self._language_inputs(input_ids, pixel_values, qformer_input_ids, qformer_attention_mask, kwargs)
        return self.language_model.generate(input_ids=input_ids, **kwargs)


@register_adapter
class InstructBlipAdapter(Adapter):
    family = "instructblip"
    model_types = ("instructblip",)
    checkpoint = "Salesforce/instructblip-vicuna-7b"  # the smallest decoder-only one (Vicuna 7B)
    drop_on_continue = ("pixel_values", "qformer_input_ids", "qformer_attention_mask")

    def __init__(self, model, processor) -> None:
        if not model.config.use_decoder_only_language_model:
            raise VisfocusError("instructblip: only decoder-only language models (Vicuna, Llama) are supported, not "
                             f"{model.config.text_config.model_type}")
        if type(model) is transformers.InstructBlipForConditionalGeneration:
            model.__class__ = SteerableInstructBlip  # the same weights; forward/generate also run without the image
        super().__init__(model, processor)

    @property
    def logits_module(self) -> torch.nn.Module:
        """Its ``generate`` is the language model's: each step's logits come from the language model's forward."""
        return self.model.language_model

    @property
    def no_grid_reason(self) -> str:
        """The query tokens are learned queries over the whole image, not patches: no token has a pixel box."""
        return (f"instructblip: its {self.num_query_tokens} Q-Former query tokens have no spatial grid; attention over "
                "them is still traced per token")

    @property
    def num_query_tokens(self) -> int:
        return int(self.model.config.num_query_tokens)

    def build_prompt(self, question: str) -> str:
        """No chat template: the prompt is the question (the processor puts the query tokens and BOS before it)."""
        return question

    def encode_prompts(self, images, prompts) -> dict:
        """The processor's inputs with each row's padding moved to the front (``_questions_and_padding``)."""
        return self._questions_and_padding(super().encode_prompts(images, prompts), prompts)

    def encode_answers(self, images, prompts, answers) -> tuple[dict, list[str]]:
        """Training inputs whose Q-Former reads the question only, never the answer (as InstructBLIP is trained)."""
        inputs, targets = super().encode_answers(images, prompts, answers)
        return self._questions_and_padding(inputs, prompts), targets

    def _questions_and_padding(self, inputs: dict, questions: list[str]) -> dict:
        """The Q-Former's text is ``questions``, padded on the right: it numbers its text tokens from 0 whatever
        their mask, so a question padded on the left (the processor pads it as the language tokenizer does) would
        move in a batch. The processor pads the text on the left and then puts the query tokens before the padding
        (``<image>×32 <pad>… <s> question``); the same tokens with the padding leading (``<pad>… <image>×32 <s>
        question``) attend to the same keys at the same positions (positions count real tokens), so the answer is
        the same, and padding leads as everywhere else."""
        qformer = self.processor.qformer_tokenizer(questions, padding=True, padding_side="right", return_tensors="pt")
        inputs["qformer_input_ids"], inputs["qformer_attention_mask"] = qformer["input_ids"], qformer["attention_mask"]
        mask = inputs["attention_mask"].bool()  # (B, S)
        order = torch.argsort(mask.long(), dim=-1, stable=True)  # (B, S): padding columns first, order kept
        for name in ("input_ids", "attention_mask"):
            inputs[name] = torch.gather(inputs[name], 1, order)
        return inputs

    def views(self, inputs: dict, image_index: int, segment: np.ndarray, size: tuple[int, int]) -> list[ImageView]:
        """No view: the query tokens are not a grid over the image (``no_grid_reason``)."""
        self._check_count(segment, self.num_query_tokens, self.family)
        return []

    @cached_property
    def template_after_image(self) -> tuple[int, ...]:
        """After the query tokens comes what the tokenizer puts before every text (BOS)."""
        first, second = (self.processor.tokenizer(q)["input_ids"] for q in ("A", "Z"))
        shared = 0
        while shared < min(len(first), len(second)) and first[shared] == second[shared]:
            shared += 1
        return tuple(first[:shared])

    def shares_prefix_exactly(self, inputs: dict, new_tokens: int | None = None) -> bool:
        """Never: the query tokens are the Q-Former's reading of the image *for this question* (it attends to the
        question's ``qformer_input_ids``), so two questions about one image have different image tokens, and a
        prefix stored per image would give one question the other's. The batch is prefilled whole."""
        return False

    def select_vision(self, inputs: dict, rows: list[int]) -> dict:
        """Each row's pixels and its question's Q-Former tokens."""
        return {k: inputs[k][rows] for k in self.drop_on_continue if isinstance(inputs.get(k), torch.Tensor)}
