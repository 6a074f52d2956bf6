"""``lmms-eval --model visfocus``: any lmms-eval task answered by a visfocus-loaded VLM under any visfocus method.

``--model_args pretrained=<Hub id or path>,method=<name>,<the method's parameters>,dtype=...,device=...,
device_map=...,trace=heads|mean,trace_dir=...,share_prefix=true|false`` (see ``settings``). ``generate_until``
answers through ``VLM.answer_batch`` in batches of ``--batch_size``, in request order, honouring each task's
``gen_kwargs`` (``decoding``); ``loglikelihood`` scores each continuation under the method's own next-token
distribution (``VLM.score_continuations``), for every method, and returns what lmms-eval's own models return and its
multiple-choice scoring expects (it picks the lowest): the mean negative log-likelihood per continuation token, with
whether the continuation is the method's greedy choice. Under lmms-eval's multi-process mode
(``accelerate launch -m lmms_eval`` or ``torchrun -m lmms_eval``) lmms-eval shards the docs; this model only takes its
rank from the launcher's environment and its device from it (``cuda`` → this rank's GPU; the CPU works too).

Errors a user can fix (an unknown method or parameter, a value out of range, a task asking for beams) are one line
``visfocus: error: ...`` and exit status 2 when lmms-eval built the model from the command line."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmms_eval.api.model import lmms
from tqdm import tqdm

from visfocus import distributed
from visfocus.api import load_model
from visfocus.errors import VisfocusError
from visfocus.integrations.lmms.decoding import Decoding, cut_at_stop, decoding
from visfocus.integrations.lmms.settings import LmmsSettings, exit_with, parse_settings
from visfocus.run.folder import folder_path
from visfocus.tracefile import sample_arrays, write_shard


def _output_path_from_argv(argv: list[str]) -> str | None:
    """lmms-eval's ``--output_path`` (the model is not told it; trace files go next to lmms-eval's outputs)."""
    for i, arg in enumerate(argv):
        if arg == "--output_path" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--output_path="):
            return arg.split("=", 1)[1]
    return None


def trace_folder(settings: LmmsSettings, output_path: str | None, rank: int) -> Path:
    """Where this launch writes its trace files: ``<trace_dir or --output_path/visfocus_traces>/<model>/<method and
    its arguments>/traces_<task>/``, one folder per model and method (as ``visfocus eval`` names its run folders).
    Shards are named by rank, so ranks never write the same file; a folder that already holds this rank's shards
    belongs to an earlier launch, and is refused rather than mixed with this one."""
    root = settings.trace_dir or output_path
    if root is None:
        raise VisfocusError(f"trace={settings.trace} needs --output_path or trace_dir=<folder>")
    base = Path(root) if settings.trace_dir else Path(root) / "visfocus_traces"
    folder = folder_path(base, settings.model, settings.method_name, settings.method_args)
    earlier = sorted(folder.glob(f"traces_*/rank{rank}_*.npz"))
    if earlier:
        raise VisfocusError(f"{folder} already holds trace files of an earlier run (e.g. {earlier[0]}); remove "
                            "that folder or pass another trace_dir= or --output_path, so that runs are not mixed")
    return folder


class VisFocusLmms(lmms):
    """The lmms-eval model ``visfocus`` (a "simple" model: the task's ``doc_to_visual`` and ``doc_to_text``)."""

    is_simple = True

    def __init__(self, pretrained: str | None = None, method: str = "baseline", batch_size: int | str = 1,
                 device: str | None = None, max_batch_size: int | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.one_line_errors = False  # set by create_from_arg_string: the command line gets one line, not a trace
        ranks = distributed.environment_ranks()
        self._rank, self._world_size = ranks.rank, ranks.world_size
        args = {"pretrained": pretrained, "method": method, "batch_size": batch_size, **kwargs}
        if device is not None:
            args["device"] = device
        self.settings = parse_settings(args)
        self.method = self.settings.build_method()
        self.trace_root = None
        if self.settings.trace is not None:
            self.trace_root = trace_folder(self.settings, _output_path_from_argv(sys.argv), ranks.rank)
        self.vlm = load_model(self.settings.model, {"device": _default_device(), **self.settings.model_args}, ranks)
        self._device = self.vlm.model.device
        self._reported: set[str] = set()
        _keep_loglikelihood_pairs()

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> VisFocusLmms:
        try:
            model = super().create_from_arg_string(arg_string, additional_config)
        except VisfocusError as err:
            exit_with(err)
        model.one_line_errors = True
        return model

    @property
    def device(self):
        return self._device

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except VisfocusError as err:
            if not self.one_line_errors:
                raise
            exit_with(err)

    # --- lmms-eval's requests ---------------------------------------------------------------------------------------
    def _doc(self, task: str, split: str, doc_id: int) -> dict:
        return self.task_dict[task][split][doc_id]

    def _visual(self, doc_to_visual, doc: dict, task: str, doc_id: int):
        visuals = [v for v in (doc_to_visual(doc) or []) if v is not None]
        if len(visuals) != 1:
            raise VisfocusError(f"task {task} doc {doc_id} has {len(visuals)} images; visfocus answers questions "
                                "about exactly one image")
        return visuals[0]

    def _options(self, doc: dict) -> list[str] | None:
        """The answer words of a doc of our tasks (AdaptVis's option confidence reads them); None for others."""
        if "visfocus_task" not in doc:
            return None
        return list(doc["options"]) or None

    def generate_until(self, requests) -> list[str]:
        with self._errors():
            return self._generate(requests)

    def _generate(self, requests) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}  # one decoding setting per group, requests in order
        for i, request in enumerate(requests):
            if len(request.args) != 6 or not isinstance(request.args[1], dict):  # e.g. agentic tasks' chat requests
                raise VisfocusError(f"task {request.args[-2]} sends chat-style requests (agentic or multi-round "
                                    "tasks), which visfocus does not support; it answers one question per image")
            groups.setdefault(repr(sorted(request.args[1].items(), key=str)), []).append(i)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="visfocus answers")
        for indices in groups.values():
            how = decoding(requests[indices[0]].args[1])
            self._report_ignored(how)
            if self.settings.share_prefix and self.method.shares_prefix:
                indices = self._by_image(requests, indices)
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                texts = self._answer_chunk([requests[i].args for i in chunk], how)
                for i, text in zip(chunk, texts):
                    out[i] = text
                progress.update(len(chunk))
        progress.close()
        return out

    def _by_image(self, requests, indices: list[int]) -> list[int]:
        """``indices`` reordered so that the requests about one image follow one another (images in order of first
        appearance, requests in lmms-eval's order within each): consecutive batches then share the image's prefix,
        as ``visfocus eval``'s samples do. The answers still go back in lmms-eval's order."""
        first: dict[str, int] = {}
        groups = []
        for i in tqdm(indices, disable=self.rank != 0 or len(indices) < 2, desc="visfocus: requests by image"):
            _, _, doc_to_visual, doc_id, task, split = requests[i].args
            key = self.vlm.image_key(self._visual(doc_to_visual, self._doc(task, split, doc_id), task, doc_id))
            groups.append(first.setdefault(key, len(first)))
        return [i for _, i in sorted(zip(groups, indices), key=lambda pair: pair[0])]  # stable within an image

    def _answer_chunk(self, args: list[tuple], how: Decoding) -> list[str]:
        images, questions, options, names = [], [], [], []
        for ctx, _, doc_to_visual, doc_id, task, split in args:
            doc = self._doc(task, split, doc_id)
            images.append(self._visual(doc_to_visual, doc, task, doc_id))
            questions.append(ctx)
            options.append(self._options(doc))
            names.append((task, doc_id))
        answers = self.vlm.answer_batch(images, questions, self.method, max_new_tokens=how.max_new_tokens,
                                        options=options, trace=self.trace_root is not None, sampling=how.sampling,
                                        share_prefix=self.settings.share_prefix)
        if self.trace_root is not None:
            self._write_traces(names, answers)
        return [cut_at_stop(a.text, how.until) for a in answers]

    def _write_traces(self, names: list[tuple[str, int]], answers: list) -> None:
        by_task: dict[str, dict[str, dict]] = {}
        for (task, doc_id), answer in zip(names, answers):
            by_task.setdefault(task, {})[str(doc_id)] = sample_arrays(answer.trace, answer.extras, self.settings.trace)
        for task, samples in by_task.items():
            write_shard(self.trace_root / f"traces_{task}", f"rank{self.rank}_doc{min(samples, key=int)}", samples)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        with self._errors():
            return self._loglikelihood(requests)

    def _loglikelihood(self, requests) -> list[tuple[float, bool]]:
        out: list[tuple[float, bool]] = []
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="visfocus scores")
        for start in range(0, len(requests), self.batch_size):
            images, contexts, continuations, options = [], [], [], []
            for request in requests[start:start + self.batch_size]:
                ctx, target, doc_to_visual, doc_id, task, split = request.args
                doc = self._doc(task, split, doc_id)
                continuation = target if isinstance(target, str) else target(doc)
                if not isinstance(continuation, str):
                    raise VisfocusError(f"task {task}: a loglikelihood target must be text, got "
                                        f"{type(continuation).__name__}")
                images.append(self._visual(doc_to_visual, doc, task, doc_id))
                contexts.append(ctx)
                continuations.append(continuation)
                options.append(self._options(doc))
            scores = self.vlm.score_continuations(images, contexts, continuations, self.method, options=options,
                                                  share_prefix=self.settings.share_prefix)
            # what lmms-eval's own models return and its multiple-choice scoring expects (it takes the lowest): the
            # mean negative log-likelihood per continuation token, not the log-likelihood its name suggests
            out.extend((float(-s.logprob / len(s.tokens)), bool(s.greedy)) for s in scores)
            progress.update(len(images))
        progress.close()
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        with self._errors():
            raise VisfocusError("multi-round tasks are not supported: visfocus answers one question per image")

    def _report_ignored(self, how: Decoding) -> None:
        new = [key for key in how.ignored if key not in self._reported]
        if new and self.rank == 0:
            print(f"[visfocus] gen_kwargs not used by visfocus: {', '.join(new)}", file=sys.stderr)
        self._reported.update(new)


def _keep_loglikelihood_pairs() -> None:
    """lmms-eval 0.7 (0.7.3 included) turns every model output that is not text into text: its
    ``unwrap_generation_output`` ends in ``str(output)``, so the ``(logprob, is_greedy)`` pairs that ``loglikelihood``
    must return reach multiple-choice scoring as strings and fail there (for its own models too). Where the installed
    lmms-eval does that, such pairs pass through unchanged; everything else goes to lmms-eval's own function."""
    from lmms_eval import evaluator

    original = getattr(evaluator, "unwrap_generation_output", None)  # lmms-eval 0.6 has none: nothing to undo
    if original is None or getattr(original, "visfocus_keeps_pairs", False) \
            or not isinstance(original((0.0, True))[0], str):
        return

    def unwrap(output):
        if isinstance(output, tuple) and len(output) == 2 and isinstance(output[0], float) \
                and isinstance(output[1], bool):
            return output, None
        return original(output)

    unwrap.visfocus_keeps_pairs = True
    evaluator.unwrap_generation_output = unwrap


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
