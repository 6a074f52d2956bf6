"""Loading a Hugging Face VLM by Hub id or local path, with the visfocus attention function on the text decoder and
SDPA on the vision tower."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from visfocus.errors import VisfocusError
from visfocus.models import llava, qwen  # noqa: F401  (registers the family adapters)
from visfocus.models.base import Adapter, adapter_for
from visfocus.models.processor import load_processor
from visfocus.steer.attention import register
from visfocus.values import parse_bool, parse_key_values, parse_text

# What ``--model_args`` (and lmms-eval's model args, and a YAML config's ``model_args``) may set, with defaults.
MODEL_ARGS = {"dtype": "float32", "device": "cpu", "device_map": None, "max_memory": None, "revision": None,
              "trust_remote_code": False}

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def _dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in DTYPES:
        raise VisfocusError(f"unknown dtype '{dtype}'; use auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def parse_model_args(value: Any) -> dict[str, Any]:
    """``"dtype=bfloat16,device=cuda"`` or a mapping → every model argument, typed, defaults filled in: the keyword
    arguments of ``visfocus.load``. ``trust_remote_code`` is true only when it says so (true/1/yes/on); an unknown key
    or a bad value is one error."""
    given = parse_key_values(value, "model argument")
    unknown = sorted(set(given) - set(MODEL_ARGS))
    if unknown:
        names = ", ".join(name if name.isprintable() else repr(name) for name in unknown)  # one line, always
        raise VisfocusError(f"unknown model argument(s) {names}; known: {', '.join(MODEL_ARGS)}")
    out = {**MODEL_ARGS, **{k: v for k, v in given.items() if v is not None}}
    out["dtype"] = parse_text(out["dtype"], "model argument dtype", choices=("auto", *DTYPES))
    out["device"] = parse_text(out["device"], "model argument device")
    if out["device_map"] is not None and not isinstance(out["device_map"], dict):
        out["device_map"] = parse_text(out["device_map"], "model argument device_map")
    if out["revision"] is not None:
        out["revision"] = parse_text(str(out["revision"]), "model argument revision")
    out["max_memory"] = parse_max_memory(out["max_memory"])
    out["trust_remote_code"] = parse_bool(out["trust_remote_code"], "model argument trust_remote_code")
    return out


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


def weights_identity(id_or_path: str, revision: str | None = None) -> dict[str, Any]:
    """What identifies the weights a run used, without loading them: for a local folder, a fingerprint (the SHA-256
    of its ``config.json`` and the names and sizes of its weight files); for a Hub id, the revision asked for (the
    commit it resolved to is ``hub_commit``, known once the model is loaded)."""
    folder = Path(id_or_path).expanduser()
    if not folder.is_dir():
        return {"source": "hub", "revision": revision}
    config = folder / "config.json"
    files = sorted([p.name, p.stat().st_size] for p in folder.iterdir()
                   if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    return {"source": "local folder",
            "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None,
            "weight_files": files}


def hub_commit(id_or_path: str, revision: str | None = None) -> str | None:
    """The commit of the Hub snapshot a loaded model came from (read from the local cache, no network); None for a
    local folder or when the cache cannot tell."""
    if Path(id_or_path).expanduser().is_dir():
        return None
    try:
        from transformers.utils import cached_file
        from transformers.utils.hub import extract_commit_hash

        path = cached_file(id_or_path, "config.json", revision=revision, local_files_only=True)
        return extract_commit_hash(path, None)
    except Exception:  # noqa: BLE001 - an unknown commit is recorded as unknown, never a failed run
        return None


def parse_max_memory(text: str | dict | None) -> dict | None:
    """``"0:20GiB;1:20GiB;cpu:64GiB"`` → ``{0: "20GiB", 1: "20GiB", "cpu": "64GiB"}`` (GPU indices as ints)."""
    if text is None or isinstance(text, dict):
        return text
    if not isinstance(text, str):
        raise VisfocusError(f"cannot read max_memory {text!r}: expected DEVICE:SIZE;..., e.g. 0:20GiB;1:20GiB")
    out: dict = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        device, sep, size = item.partition(":")
        if not sep or not size.strip() or not device.strip():
            raise VisfocusError(f"cannot read max_memory '{item}': expected DEVICE:SIZE, e.g. 0:20GiB;1:20GiB")
        out[int(device) if device.strip().isdigit() and device.strip().isascii() else device.strip()] = size.strip()
    return out


def load_arguments(model: str | None, model_args: Any = None, ranks=None) -> tuple[str, dict[str, Any]]:
    """What ``visfocus.load`` is called with for ``model`` (a Hub id or local path; None: the built-in model organism)
    and ``model_args`` (``"KEY=VALUE,..."`` or a mapping, ``parse_model_args``), on this process's rank
    (``visfocus.distributed.Ranks``; default: a single process): under several ranks, ``cuda`` is this rank's GPU and
    ``device_map`` shards over this rank's share of the GPUs only."""
    from visfocus.distributed import Ranks
    from visfocus.organism import organism_path

    ranks = ranks or Ranks()
    args = parse_model_args(model_args)
    args["device"] = ranks.device(args["device"])
    if args["device_map"] is not None and ranks.distributed and torch.cuda.is_available():
        # data × model parallel: each rank shards its model over its own GPUs only
        sizes = {gpu: f"{torch.cuda.get_device_properties(gpu).total_memory}B"
                 for gpu in range(torch.cuda.device_count())}
        args["max_memory"] = rank_max_memory(args["max_memory"], ranks.gpus(len(sizes)), sizes)
    return (str(organism_path()) if model is None else model), args


def rank_max_memory(max_memory: dict | None, gpus: list[int], sizes: dict[int, str]) -> dict:
    """``max_memory`` for one rank: its own GPUs only (the user's cap where given, else the whole device), plus
    the user's CPU cap; devices left out are not used by ``device_map="auto"``."""
    given = max_memory or {}
    return {gpu: given.get(gpu, sizes[gpu]) for gpu in gpus} | ({"cpu": given["cpu"]} if "cpu" in given else {})


def load_adapter(id_or_path: str, *, dtype: str | torch.dtype = "float32", device: str = "cpu",
                 trust_remote_code: bool = False, device_map: str | dict | None = None,
                 max_memory: dict | None = None, revision: str | None = None) -> Adapter:
    """Load model + processor, wrapped in the family's adapter (``visfocus.load`` makes a ``VLM`` of it).
    ``dtype="auto"`` keeps the checkpoint's. ``device_map`` (e.g. ``"auto"``, with an optional ``max_memory`` such as
    ``{0: "20GiB", 1: "20GiB"}``) shards the model over devices instead of moving it to ``device``. ``revision``: a
    Hub branch, tag or commit. ``trust_remote_code`` must be a real ``True`` to run a checkpoint's own Python files
    (``auto_map``); that is announced on stderr."""
    if not isinstance(trust_remote_code, bool):
        raise VisfocusError(f"trust_remote_code must be True or False, got {trust_remote_code!r}")
    if trust_remote_code:
        print(f"[visfocus] trust_remote_code is on: Python files shipped with '{id_or_path}' (its auto_map) will run "
              "on this machine", file=sys.stderr)
    from visfocus.organism import resolve

    id_or_path = resolve(id_or_path)  # "organism", "organism-v1": the packaged organisms
    hub = {"revision": revision} if revision is not None else {}
    try:
        config = AutoConfig.from_pretrained(id_or_path, trust_remote_code=trust_remote_code, **hub)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VisfocusError(f"cannot load model '{id_or_path}': not a local model folder and not loadable from the "
                            f"Hugging Face Hub ({first})") from err
    adapter_cls = adapter_for(config.model_type)
    name = register()
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            id_or_path, dtype=_dtype(dtype), trust_remote_code=trust_remote_code, **hub,
            attn_implementation={"": "sdpa", "text_config": name, "vision_config": "sdpa"},
            **({"device_map": device_map, "max_memory": max_memory} if device_map is not None else {}))
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VisfocusError(f"cannot load the weights of '{id_or_path}' ({first})") from err
    if device_map is None:
        model.to(device)
    model.eval()
    processor = load_processor(id_or_path, trust_remote_code=trust_remote_code, **hub)
    return adapter_cls(model, processor)
