"""Which image-text-to-text model types of the installed transformers visfocus supports, and why not the rest.

Pure and quick (a few seconds): every model type in transformers' image-text-to-text mapping is judged from facts —
an adapter registered for it in ``ADAPTERS``, or else its config class built with no arguments (never weights, never
the network): encoder–decoder, cross-attention to the image features, no image-token id (visfocus finds the image
in ``input_ids``), or decoder-only with inline image tokens that no adapter covers yet."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

from visfocus.models import ADAPTERS

SUPPORTED, NOT_SUPPORTED = "supported", "not supported"
CROSS_ATTENTION = "cross-attention model: no inline image tokens"
ENCODER_DECODER = "encoder-decoder model: the image is read by an encoder, not inline in a decoder"
NO_IMAGE_TOKEN = "no image-token id in its config (image_token_id/_index): image positions not findable in input_ids"
NOT_ADAPTED = "decoder-only with inline image tokens: not adapted yet"

# The only hand-kept facts: model types known to cross-attend to image features, for when their config cannot be
# read (mllama's text config names its cross-attention layers; this keeps the verdict if it ever cannot be built).
CROSS_ATTENTION_TYPES = frozenset({"mllama"})
# Config attributes whose presence means the language model cross-attends to the image: mllama's
# ``cross_attention_layers`` (a non-empty list), IDEFICS's gated cross-attention every ``cross_layer_interval`` layers.
CROSS_ATTENTION_ATTRS = ("cross_attention_layers", "cross_layer_interval")


@dataclass(frozen=True)
class Entry:
    """One model type's verdict: ``family`` is the adapter family when supported."""

    model_type: str
    status: str
    reason: str
    family: str | None = None

    @property
    def supported(self) -> bool:
        return self.status == SUPPORTED


def image_text_to_text_model_types() -> list[str]:
    """The installed transformers' image-text-to-text model types, sorted (cheap: no config is built)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return sorted(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def _default_config(model_type: str):
    """The model type's config built with no arguments, or the reason it could not be."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        config_class = CONFIG_MAPPING[model_type]
    except Exception as err:  # unknown type, or its module needs a package that is not installed
        return None, f"no config class ({type(err).__name__}: {_short(err)})"
    try:
        return config_class(), None
    except Exception as err:  # needs arguments or an extra package
        return None, f"its config cannot be built with defaults ({type(err).__name__}: {_short(err)})"


def _short(err: Exception, limit: int = 60) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _configs(config) -> list:
    """The config and its text (decoder) config, where that is a separate one."""
    try:
        text = config.get_text_config()
    except Exception:
        text = None
    return [config] if text is None or text is config else [config, text]


def _crosses_attention(configs: list) -> bool:
    for config in configs:
        for attr in CROSS_ATTENTION_ATTRS:
            value = getattr(config, attr, None)
            if value is not None and value is not False and value != [] and value != ():
                return True
    return False


def _image_token_id(configs: list):
    for config in configs:
        for attr in ("image_token_id", "image_token_index"):
            if getattr(config, attr, None) is not None:
                return getattr(config, attr)
    return None


def classify(model_type: str, adapters: Mapping[str, type] | None = None) -> Entry:
    """The verdict for one model type: supported where an adapter is registered, else the first fact that stands in
    the way (encoder–decoder, cross-attention, no image-token id), else "not adapted yet"."""
    adapters = ADAPTERS if adapters is None else adapters
    if model_type in adapters:
        family = adapters[model_type].family
        return Entry(model_type, SUPPORTED, f"adapter family {family}", family)
    if model_type in CROSS_ATTENTION_TYPES:
        return Entry(model_type, NOT_SUPPORTED, CROSS_ATTENTION)
    config, failure = _default_config(model_type)
    if config is None:
        return Entry(model_type, NOT_SUPPORTED, f"{NOT_ADAPTED} (architecture not checked: {failure})")
    configs = _configs(config)
    if any(getattr(c, "is_encoder_decoder", False) for c in configs):
        return Entry(model_type, NOT_SUPPORTED, ENCODER_DECODER)
    if _crosses_attention(configs):
        return Entry(model_type, NOT_SUPPORTED, CROSS_ATTENTION)
    if _image_token_id(configs) is None:
        return Entry(model_type, NOT_SUPPORTED, NO_IMAGE_TOKEN)
    return Entry(model_type, NOT_SUPPORTED, NOT_ADAPTED)


def catalog(adapters: Mapping[str, type] | None = None) -> list[Entry]:
    """Every image-text-to-text model type of the installed transformers (and any registered adapter's type it
    lacks), sorted, each once with its verdict. transformers' log and warnings are kept quiet while configs build."""
    from transformers.utils import logging as hf_logging

    adapters = ADAPTERS if adapters is None else adapters
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            types = sorted(set(image_text_to_text_model_types()) | set(adapters))
            return [classify(model_type, adapters) for model_type in types]
    finally:
        hf_logging.set_verbosity(verbosity)


def format_catalog(entries: list[Entry]) -> list[str]:
    """The catalog as text lines: the supported families with their model types first, then a table of the rest."""
    import transformers

    supported = [e for e in entries if e.supported]
    rest = [e for e in entries if not e.supported]
    families: dict[str, list[str]] = {}
    for entry in supported:
        families.setdefault(entry.family or entry.model_type, []).append(entry.model_type)
    lines = [f"supported ({len(supported)} of {len(entries)} image-text-to-text model types in transformers "
             f"{transformers.__version__}):"]
    checkpoints = {adapter.family: adapter.checkpoint for adapter in ADAPTERS.values()}
    labels = {family: family + ("" if types == [family] else f" ({', '.join(types)})")
              for family, types in sorted(families.items())}
    width = max([0, *(len(label) for label in labels.values())])
    lines += [f"  {label:<{width}}  smallest checkpoint: {checkpoints[family]}" if family in checkpoints
              else f"  {label}" for family, label in labels.items()]
    lines.append(f"not supported ({len(rest)}):")
    width = max([len("model_type"), *(len(e.model_type) for e in rest)])
    lines.append(f"  {'model_type':<{width}}  {'status':<{len(NOT_SUPPORTED)}}  reason")
    lines += [f"  {e.model_type:<{width}}  {e.status:<{len(NOT_SUPPORTED)}}  {e.reason}" for e in rest]
    return lines
