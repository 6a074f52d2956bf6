"""The lmms-eval plugin on a POPE-shaped workload: N images × Q questions handed to ``VisFocusLmms.generate_until``
as lmms-eval hands them, in an order that interleaves the images (lmms-eval's own ordering owes nothing to images),
answered with ``share_prefix=false`` (every question prefilled whole, lmms-eval's order) and ``share_prefix=true``
(the plugin answers the requests about one image one after another, from its shared prefix). Random Qwen3-VL-2B
weights (``visfocus.overhead.build_vlm``, 196 image tokens). Prints samples/second of each and the ratio, and
whether the answers agree.

    python benchmarks/lmms_grouping.py                     # 8 images × 6 questions, 8 decoder layers, fp32
    python benchmarks/lmms_grouping.py --layers 2 --images 2 --questions 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prefix_sharing import questions_for  # noqa: E402  (POPE-style questions, a different run of objects per image)


def requests_for(images, questions: list[list[str]]):
    """lmms-eval ``Instance``s, question-major (image 0's first question, image 1's first, …): the images interleave."""
    from lmms_eval.api.instance import Instance

    order = [(i, j) for j in range(len(questions[0])) for i in range(len(images))]
    docs = [{"question": questions[i][j]} for i, j in order]
    requests = [Instance("generate_until", (docs[n]["question"], {"max_new_tokens": 1, "until": []},
                                            lambda doc, i=i: [images[i]], n, "pope_shaped", "test"), n,
                         {"task": "pope_shaped", "doc_id": n, "repeats": 1}) for n, (i, _) in enumerate(order)]
    return requests, docs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--questions", type=int, default=6)
    args = parser.parse_args(argv)
    import torch

    from visfocus.integrations.lmms.model import VisFocusLmms
    from visfocus.overhead import build_vlm
    from visfocus.testing import make_image

    images = [make_image(448, 448, seed=i + 1) for i in range(args.images)]
    requests, docs = requests_for(images, [questions_for(i, args.questions, "") for i in range(args.images)])
    vlm = build_vlm(args.layers, torch.float32)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; Qwen3-VL-2B architecture, {args.layers} "
          f"decoder layers, random weights, fp32; {args.images} images × {args.questions} questions, interleaved; "
          "batch_size 1, one answer token", flush=True)
    results = {}
    for share in (False, True):
        model = VisFocusLmms(method="baseline", batch_size=1, share_prefix=share)
        model.vlm = vlm  # the benchmark's model in place of the one the plugin loaded
        model.task_dict = {"pope_shaped": {"test": docs}}
        model.generate_until(requests[:1])  # warm-up, not timed
        vlm.prefix_store.clear()
        started = time.perf_counter()
        answers = model.generate_until(requests)
        results[share] = (len(requests) / (time.perf_counter() - started), answers)
    (plain, plain_answers), (shared, shared_answers) = results[False], results[True]
    print(f"share_prefix=false: {plain:.3f} samples/s\nshare_prefix=true : {shared:.3f} samples/s\n"
          f"ratio (true ÷ false): {shared / plain:.2f}×; identical answers: {plain_answers == shared_answers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
