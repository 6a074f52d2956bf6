"""The public object: a loaded VLM that answers questions about images, optionally under a method, and reports the
first-token logits, confidence, cost and (on request) where it looked."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from typing import Any

import torch
from PIL import Image

from visfocus.answers import (
    Answer,
    ContinuationScore,
    Sampling,
    _integer,
    _sampler,
    _sampling_refused,
    continuation_ids,
    row_steps_and_scores,
)
from visfocus.errors import VisfocusError
from visfocus.images import ImageSource, open_image
from visfocus.interventions import Batch, Method
from visfocus.interventions.base import MethodResult, Params
from visfocus.interventions.baseline import Baseline
from visfocus.interventions.variants import run_variants
from visfocus.models.base import Adapter
from visfocus.models.loading import load_adapter
from visfocus.questions import text_problem, too_long, unicode_problem
from visfocus.steer.forced import eos_token_ids
from visfocus.steer.prefix import PrefixStore, image_fingerprint
from visfocus.steer.runner import Runner

ImageLike = ImageSource


def load_image(image: ImageLike) -> Image.Image:
    """An RGB PIL image, upright, from a PIL image, a path or an array: ``visfocus.images.open_image``, the one
    loader (allowed formats, EXIF orientation, pixel limit, dtype scaling); one clear error otherwise."""
    return open_image(image)


class VLM:
    """A loaded vision-language model. Build with ``visfocus.load``."""

    def __init__(self, model, processor, adapter: Adapter) -> None:
        self.model = model
        self.processor = processor
        self.adapter = adapter
        # image prefixes kept between calls (an entry lives while consecutive calls use it); ``keep_prompts=True``
        # also keeps whole prompts, for asking the same questions under other methods or parameters
        self.prefix_store = PrefixStore()

    @contextlib.contextmanager
    def keeping_prompts(self) -> Iterator[VLM]:
        """Within the block, also keep each answered prompt's unedited prefill, so that asking the same question
        about the same image again (under another method or other parameters) re-runs only its last prompt token.
        Exact for every method that shares prefixes; what is kept lives while consecutive calls use it."""
        before = self.prefix_store.keep_prompts
        self.prefix_store.keep_prompts = True
        try:
            yield self
        finally:
            self.prefix_store.keep_prompts = before

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    @property
    def num_heads(self) -> int:
        """Query heads per decoder layer (the trace's H)."""
        return self.adapter.num_heads

    @property
    def context_length(self) -> int | None:
        """The text model's context in tokens (``max_position_embeddings`` of its config), or None when unknown."""
        value = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        return value if _integer(value) and value > 0 else None

    @cached_property
    def special_token_texts(self) -> tuple[str, ...]:
        """Every text the tokenizer reads as a special token, longest first: the added tokens marked special (image
        placeholders, chat markers), the named special tokens (BOS, EOS, pad…) and the processor's image/video
        token strings (which the processor expands into the image's tokens)."""
        tokenizer = self.processor.tokenizer
        texts = {str(t.content) for t in tokenizer.added_tokens_decoder.values() if t.special}
        texts |= {str(t) for t in tokenizer.all_special_tokens}
        for name in ("image_token", "video_token"):
            for owner in (self.processor, tokenizer):
                value = getattr(owner, name, None)
                if isinstance(value, str):
                    texts.add(value)
        return tuple(sorted((t for t in texts if t), key=lambda t: (-len(t), t)))

    def question_problems(self, questions: Sequence[str], *, max_new_tokens: int | None = 0,
                          noun: str = "question") -> list[str | None]:
        """Per question, why it cannot be asked (one line naming it), or None: not a non-empty string, invalid
        Unicode (a lone surrogate), text the tokenizer reads as a special token, or a prompt that with
        ``max_new_tokens`` cannot fit the model's context (``context_length``). The length counts the chat prompt
        with the image placeholder as one token (the image's own tokens depend on the image; ``answer_batch``
        checks the whole prompt before its first forward pass); ``max_new_tokens=None`` skips the length.

        Special tokens are refused, not escaped: an image placeholder (``<|image_pad|>``, ``<image>``) would make
        the processor expect another image, and a chat marker (``<|im_start|>``, ``</s>``) would change the
        prompt's structure; no tokenizer option keeps them as plain text for every family."""
        problems = [text_problem(q, noun, self.special_token_texts) for q in questions]
        limit = self.context_length
        fine = [i for i, problem in enumerate(problems) if problem is None]
        if limit is not None and fine and max_new_tokens is not None:
            prompts = [self.adapter.build_prompt(questions[i]) for i in fine]
            special = self.adapter.special_tokens_kwargs(prompts[0])  # no second BOS where the template writes one
            tokenized = self.processor.tokenizer(prompts, verbose=False, **special)
            lengths = [len(ids) for ids in tokenized["input_ids"]]
            for i, length in zip(fine, lengths, strict=True):
                if length + max_new_tokens > limit:
                    problems[i] = too_long(noun, questions[i], length, max_new_tokens, limit, with_image=False)
        return problems

    def check_questions(self, questions: Sequence[str], *, max_new_tokens: int | None = 0,
                        noun: str = "question") -> None:
        """One ``VisfocusError`` for the first question that cannot be asked (``question_problems``); for checking
        every question of a run before its first forward pass."""
        for problem in self.question_problems(questions, max_new_tokens=max_new_tokens, noun=noun):
            if problem is not None:
                raise VisfocusError(problem)

    def _check_context(self, batch: Batch, questions: Sequence[str], new_tokens: int, noun: str) -> None:
        """One clear error, before any forward pass, for an encoded prompt (image tokens included) that with
        ``new_tokens`` more does not fit the model's context."""
        limit = self.context_length
        if limit is None:
            return
        lengths = batch.runner.inputs["attention_mask"].sum(-1).tolist()  # (B,) real tokens per row
        for question, length in zip(questions, lengths, strict=True):
            if length + new_tokens > limit:
                raise VisfocusError(too_long(noun, question, int(length), new_tokens, limit, with_image=True))

    def answer(self, image: ImageLike, question: str, method: Method | None = None, *, max_new_tokens: int = 16,
               trace: bool = False, options: Sequence[str] | None = None, share_prefix: bool = True,
               sampling: Sampling | None = None, return_scores: bool = False) -> Answer:
        """Answer one question about one image. ``options``: the answer words, for methods that use them."""
        return self.answer_batch([image], [question], method, max_new_tokens=max_new_tokens, trace=trace,
                                 options=[options] if options is not None else None, share_prefix=share_prefix,
                                 sampling=sampling, return_scores=return_scores)[0]

    @staticmethod
    def image_key(image: ImageSource) -> str:
        """The key of an image's content under which ``prefix_store`` keeps its prefix: questions about images with
        equal keys share one (the lmms-eval plugin orders its requests by it)."""
        picture = open_image(image)
        return image_fingerprint(picture.mode, picture.size, picture.tobytes())

    def prepare(self, images: Sequence[ImageLike], questions: Sequence[str],
                options: Sequence[Sequence[str] | None] | None = None, *, record_trace: bool = False,
                share_prefix: bool = False) -> Batch:
        """Encode a batch for a method (``Method.run``): the images, questions and options as given, the adapter,
        each row's image-token layout, and the engine's runner over the encoded tensors. ``share_prefix``: lay the
        batch out to start from the image prefixes in ``self.prefix_store``."""
        self.check_questions(questions)
        return Batch.build(self.adapter, [load_image(im) for im in images], questions, options,
                           record_trace=record_trace, prefix_store=self.prefix_store if share_prefix else None)

    def answer_batch(self, images: Sequence[ImageLike], questions: Sequence[str], method: Method | None = None, *,
                     max_new_tokens: int = 16, trace: bool = False,
                     options: Sequence[Sequence[str] | None] | None = None,
                     share_prefix: bool = True, sampling: Sampling | None = None,
                     return_scores: bool = False) -> list[Answer]:
        """Answer a batch (one image per question). Same answers as one at a time (when sampling: the same
        distributions; the draws depend on the batch).

        share_prefix: questions about one image (in this call, or in consecutive calls) share its prefill: the
        vision tower and the prompt up to the question run once per image (``visfocus.steer.prefix``); exact, and
        ignored for methods that cannot share (VEA). ``vlm.prefix_store.clear()`` forgets the stored prefixes.
        sampling: sample instead of greedy decoding (``Sampling``); None decodes greedily.
        return_scores: each answer's ``step_scores`` hold the scores every generated token was chosen from, (T, V)
        (after the method's correction and the model's own processors), to compare whole decodes."""
        method = self._checked("answer_batch", images, questions, method, options, noun="question")
        if len(questions) == 0:
            return []
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise VisfocusError(f"max_new_tokens must be an integer ≥ 1, got {max_new_tokens!r}")
        if sampling is not None and not isinstance(sampling, Sampling):
            raise VisfocusError(f"sampling must be a visfocus.api.Sampling(...), got {type(sampling).__name__}")
        if sampling is not None and not method.supports_sampling:
            raise _sampling_refused(method)
        if not isinstance(return_scores, bool):
            raise VisfocusError(f"return_scores must be True or False, got {return_scores!r}")
        pil = [load_image(im) for im in images]
        start = time.perf_counter()
        batch, result = self._run(pil, questions, method, options, max_new_tokens=max_new_tokens, trace=trace,
                                  share_prefix=share_prefix, setup=_sampler(sampling, keep_step_scores=return_scores))
        batch.runner.cost.seconds = time.perf_counter() - start  # the cost and trace of every pass, forks included
        return self._answers(batch, result, trace=trace, scores=return_scores)

    def answer_variants(self, images: Sequence[ImageLike], questions: Sequence[str], methods: Sequence[Method | None],
                        *, max_new_tokens: int = 16, options: Sequence[Sequence[str] | None] | None = None,
                        share_prefix: bool = True, max_rows: int | None = None) -> list[list[Answer]]:
        """``answer_batch`` under each of ``methods`` (None: the plain model), one list of answers per method, each
        the same as ``answer_batch`` gives it alone. Where every method is a variant method (the plain model,
        ScalingVis, AdaptVis: ``Method.variant_edits``) they all answer from one forward over the prompt
        (``visfocus.interventions.variants``), decoding on as rows of one ``generate``, at most ``max_rows`` rows at
        a time (None: all); otherwise one after another, the whole prompts kept between them. Each answer's cost is
        the joint work, its ``seconds`` that time's share per method."""
        if isinstance(methods, (Method, str)) or not isinstance(methods, Sequence):
            raise VisfocusError(f"answer_variants needs a list of methods (None: the plain model), got "
                                f"{type(methods).__name__}")
        if max_rows is not None and (not _integer(max_rows) or max_rows < 1):
            raise VisfocusError(f"max_rows must be an integer ≥ 1 or None, got {max_rows!r}")
        checked = [self._checked("answer_variants", images, questions, methods[0] if methods else None, options,
                                 noun="question")]
        checked += [self._method(m) for m in methods[1:]]
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise VisfocusError(f"max_new_tokens must be an integer ≥ 1, got {max_new_tokens!r}")
        if len(questions) == 0 or not methods:
            return [[] for _ in methods]
        pil = [load_image(im) for im in images]
        variant = [i for i, m in enumerate(checked) if m.variant_edits(self.num_layers) is not None]
        answers: dict[int, list[Answer]] = {}
        if len(variant) > 1:
            answers.update(zip(variant, self._variants(pil, questions, [checked[i] for i in variant], options,
                                                       max_new_tokens, share_prefix, max_rows) or []))
        with self.keeping_prompts() if share_prefix else contextlib.nullcontext():  # the rest, one after another
            for i, m in enumerate(checked):
                if i not in answers:
                    answers[i] = self.answer_batch(pil, questions, m, max_new_tokens=max_new_tokens, options=options,
                                                   share_prefix=share_prefix)
        return [answers[i] for i in range(len(checked))]

    def _variants(self, images: list[Image.Image], questions: Sequence[str], methods: list[Method],
                  options: Sequence[Sequence[str] | None] | None, max_new_tokens: int, share_prefix: bool,
                  max_rows: int | None) -> list[list[Answer]] | None:
        """Variant methods' answers from one forward (``run_variants``), or None where the engine cannot."""
        start = time.perf_counter()
        store = self.prefix_store if share_prefix and all(m.shares_prefix for m in methods) else None
        batch = Batch.build(self.adapter, images, questions, options, prefix_store=store, new_tokens=max_new_tokens)
        self._check_context(batch, questions, max_new_tokens, "question")
        try:
            results = run_variants(batch, methods, max_new_tokens=max_new_tokens, max_rows=max_rows)
        finally:
            if store is not None:
                store.end_call()
        if results is None:
            return None
        batch.runner.cost.seconds = (time.perf_counter() - start) / len(methods)  # each method's share
        return [self._answers(batch, result) for result in results]

    def _answers(self, batch: Batch, result: MethodResult, trace: bool = False, scores: bool = False) -> list[Answer]:
        """The answers of a method's result on ``batch`` (its texts, first-token logits and scores, confidence,
        cost, layout, trace, extras and, with ``scores``, every step's scores)."""
        runner = batch.runner  # holds the cost and trace of every pass, also of a forked batch's
        final = (result.batch or batch).runner  # the batch the answer came from
        layouts = final.layouts
        size = len(batch.questions)

        gen = result.generation
        texts = self.processor.batch_decode(gen.new_tokens, skip_special_tokens=True)
        first = self.processor.batch_decode(gen.new_tokens[:, :1], skip_special_tokens=False)
        confidence = torch.softmax(gen.first_scores, dim=-1).max(-1).values  # (B,)
        full_trace = None
        if trace:
            ids = final.inputs["input_ids"]
            special = torch.isin(ids, torch.tensor(self.processor.tokenizer.all_special_ids, device=ids.device))
            full_trace = runner.recorder.finish(final.image_cols, final.inputs["attention_mask"], layouts,
                                                special_cols=special & ~final.image_cols)
        steps, step_scores = row_steps_and_scores(gen, eos_token_ids(self.model.generation_config), scores)
        cost = {**runner.cost.as_dict(), "batch_size": size}
        shared = runner.sharing.prefix_lengths if runner.sharing is not None else [0] * size
        return [Answer(text=texts[b].strip(), first_token=first[b], first_token_logits=gen.first_logits[b].cpu(),
                       first_token_scores=gen.first_scores[b].cpu(), confidence=float(confidence[b]),
                       cost={**cost, "shared_prefix_tokens": shared[b]},
                       layout=layouts[b], trace=full_trace.row(b) if full_trace is not None else None,
                       extras=result.extras[b] if result.extras else {},
                       tokens=gen.new_tokens[b, :steps[b]].tolist(), step_scores=step_scores[b])
                for b in range(size)]

    def score_continuations(self, images: Sequence[ImageLike], contexts: Sequence[str], continuations: Sequence[str],
                            method: Method | None = None, *, options: Sequence[Sequence[str] | None] | None = None,
                            share_prefix: bool = True) -> list[ContinuationScore]:
        """The log-probability of each continuation given its image and context under ``method``'s own next-token
        distribution: the scores it decodes from (after its contrasts and penalties), teacher forced through its
        usual run (``visfocus.steer.forced``). For lmms-eval's ``loglikelihood``.

        The prompt is the one ``answer_batch`` builds with the context as the question, so the assistant's turn
        starts right after the chat template's generation prompt: a continuation's leading whitespace (lmms-eval's
        target delimiter " ") is dropped, then it is tokenized with ``tokenizer(text, add_special_tokens=False)``.
        ``greedy``: the method's greedy decoding gives exactly these tokens. Rows of different lengths score as
        they would alone."""
        if isinstance(continuations, str) or isinstance(contexts, str) or len(continuations) != len(contexts):
            raise VisfocusError(f"score_continuations needs one continuation per context: got "
                                f"{1 if isinstance(continuations, str) else len(continuations)} continuations and "
                                f"{1 if isinstance(contexts, str) else len(contexts)} contexts")
        tokens = []
        for text in continuations:
            if not isinstance(text, str) or not text.strip():
                raise VisfocusError(f"a continuation must be a non-empty string, got {text!r}")
            invalid = unicode_problem(text, "continuation")
            if invalid is not None:
                raise VisfocusError(invalid)
            tokens.append(self.processor.tokenizer(text.lstrip(), add_special_tokens=False)["input_ids"])
        return self.score_tokens(images, contexts, tokens, method, options=options, share_prefix=share_prefix)

    def score_tokens(self, images: Sequence[ImageLike], contexts: Sequence[str], tokens: Sequence[Sequence[int]],
                     method: Method | None = None, *, options: Sequence[Sequence[str] | None] | None = None,
                     share_prefix: bool = True) -> list[ContinuationScore]:
        """``score_continuations`` for continuations given as token ids (e.g. a method's own generated tokens)."""
        method = self._checked("score_continuations", images, contexts, method, options, noun="context")
        if isinstance(tokens, str) or len(tokens) != len(contexts):
            raise VisfocusError(f"score_continuations needs one continuation per context: got "
                                f"{1 if isinstance(tokens, str) else len(tokens)} continuations and "
                                f"{len(contexts)} contexts")
        if len(contexts) == 0:
            return []
        vocab = self.model.get_output_embeddings().weight.shape[0]
        eos = set(eos_token_ids(self.model.generation_config))
        rows = [continuation_ids(row, vocab, eos) for row in tokens]
        pil = [load_image(im) for im in images]
        forced = []
        self._run(pil, contexts, method, options, max_new_tokens=max(len(row) for row in rows), trace=False,
                  share_prefix=share_prefix, setup=lambda runner: forced.append(runner.force(rows)), noun="context")
        logprobs, greedy = forced[0].token_logprobs(), forced[0].greedy()
        return [ContinuationScore(logprob=sum(lp), greedy=g, token_logprobs=lp, tokens=row)
                for lp, g, row in zip(logprobs, greedy, rows, strict=True)]

    def _checked(self, call: str, images: Sequence[ImageLike], questions: Sequence[str], method: Method | None,
                 options: Sequence | None, *, noun: str) -> Method:
        """One clear error for a batch that is not one image and one ``noun`` (question or context) per row, for a
        question that cannot be asked (``question_problems``: empty, invalid Unicode, a special token), for a
        method not made by ``visfocus.method`` and for options not given per row; the method to run."""
        if isinstance(questions, str) or len(images) != len(questions):
            raise VisfocusError(f"{call} needs one image per {noun}: got {len(images)} images and "
                                f"{1 if isinstance(questions, str) else len(questions)} {noun}s")
        self.check_questions(questions, max_new_tokens=None, noun=noun)  # the length: on the encoded prompt (_run)
        if options is not None and len(options) != len(questions):
            raise VisfocusError(f"options must give one entry per {noun}: got {len(options)} for {len(questions)}")
        return self._method(method)

    @staticmethod
    def _method(method: Method | None) -> Method:
        """The method to run (None: the plain model); one clear error for one not made by ``visfocus.method``."""
        if method is not None and not isinstance(method, Method):
            raise VisfocusError(f"method must come from visfocus.method(...), got {type(method).__name__}")
        return method or Baseline(Params())

    def _run(self, images: list[Image.Image], questions: Sequence[str], method: Method,
             options: Sequence[Sequence[str] | None] | None, *, max_new_tokens: int, trace: bool,
             share_prefix: bool, setup: Callable[[Runner], object],
             noun: str = "question") -> tuple[Batch, MethodResult]:
        """Build the batch (from the image prefixes in the store when sharing and the method can), check that every
        prompt with ``max_new_tokens`` fits the context, let ``setup`` ready its runner (sampling, teacher forcing),
        and run the method on it."""
        store = self.prefix_store if share_prefix and method.shares_prefix else None
        batch = Batch.build(self.adapter, images, questions, options, record_trace=trace, prefix_store=store,
                            new_tokens=max_new_tokens, prefix_split=method.prefix_split)
        self._check_context(batch, questions, max_new_tokens, noun)
        setup(batch.runner)
        try:
            result = method.apply(batch, max_new_tokens=max_new_tokens)
        finally:
            if store is not None:
                store.end_call()  # keeps only what this call used (a call that does not share leaves it as it is)
        return batch, result


def load(id_or_path: str, *, dtype: str | torch.dtype = "float32", device: str = "cpu",
         trust_remote_code: bool = False, device_map: str | dict | None = None, max_memory: dict | None = None,
         revision: str | None = None) -> VLM:
    """Load a VLM by Hub id or local path, with the visfocus attention function on its text decoder and SDPA on its
    vision tower. ``dtype="auto"`` keeps the checkpoint's; ``trust_remote_code`` is off unless it is ``True`` (then
    announced on stderr). ``device_map``/``max_memory``: shard a model too large for one device (transformers' own
    placement). ``revision``: a Hub branch, tag or commit."""
    adapter = load_adapter(id_or_path, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                           device_map=device_map, max_memory=max_memory, revision=revision)
    return VLM(adapter.model, adapter.processor, adapter)


def load_model(model: str | None, model_args: dict[str, Any] | str | None = None, ranks=None) -> VLM:
    """``load`` as the runners call it (``visfocus eval``/``sweep``, the app, lmms-eval): ``model`` a Hub id or local
    path, None for the built-in model organism (announced on stderr); ``model_args`` the keyword arguments of ``load``
    as ``"KEY=VALUE,..."`` or a mapping, typed and checked (``parse_model_args``); ``ranks``
    (``visfocus.distributed.Ranks``) places the model on this rank's device(s) in a data-parallel run."""
    import sys

    from visfocus.models.loading import load_arguments
    from visfocus.organism import NOTE

    path, kwargs = load_arguments(model, model_args, ranks)
    if model is None and (ranks is None or ranks.is_main):
        print(f"[visfocus] {NOTE}", file=sys.stderr)
    return load(path, **kwargs)
