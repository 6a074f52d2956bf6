"""Several variant methods on one batch in one forward: the plain model, ScalingVis and AdaptVis at any number of
parameter points (a sweep's grid) are each a choice, per row, among re-runs of the last prompt token under a few edit
sets (``Method.variant_edits``). Their edit sets, deduplicated, become the variant columns of the prompt's one
forward (``visfocus.steer.variants``); each method then picks its rows' variants from the unedited row
(``Method.choose_variant``), and decoding goes on from every method's choice, as rows of one ``generate``.

Each method's answers equal what it gives alone (and alone, a variant method runs through here too)."""

from __future__ import annotations

from collections.abc import Sequence

from visfocus.interventions.base import Method, MethodResult
from visfocus.interventions.batch import Batch
from visfocus.steer.edits import Edit
from visfocus.steer.sites import Contract
from visfocus.steer.variants import UNEDITED


def variant_sets(methods: Sequence[Method], num_layers: int) -> list[tuple[tuple[Edit, ...], ...]] | None:
    """Each method's edit sets, or None when one of them is not a variant method."""
    sets = [method.variant_edits(num_layers) for method in methods]
    return None if any(s is None for s in sets) else sets


def run_variants(batch: Batch, methods: Sequence[Method], *, max_new_tokens: int,
                 max_rows: int | None = None) -> list[MethodResult] | None:
    """Every method's result on ``batch`` from one forward with variant columns, or None (nothing run) when one of
    them is not a variant method or the engine cannot use variant columns here (``Runner.variants_refused``).
    ``max_rows``: at most this many rows decode at once (continuations × batch rows; None: all)."""
    runner = batch.runner
    per_method = variant_sets(methods, batch.num_layers)
    if per_method is None:
        return None
    unique: list[tuple[Edit, ...]] = []
    for sets in per_method:
        unique += [edits for edits in sets if edits not in unique]
    if runner.variants_refused(unique) is not None:
        return None
    for method in methods:
        method.check_batch(batch)
    runner.contract = Contract(method="+".join(sorted({m.name for m in methods})),
                               sites=frozenset().union(*(m.sites for m in methods)), side_streams=frozenset())
    variants = runner.variant_pass(unique)
    choices, decode_edits, extras = [], [], []
    for method, sets in zip(methods, per_method):
        chosen = method.choose_variant(batch, variants.unedited_logits)
        choices.append([UNEDITED if j == UNEDITED else unique.index(sets[j]) for j in chosen.choice])
        decode_edits.append(tuple(chosen.decode_edits))
        extras.append(chosen.extras)
    generations = runner.continue_variants(variants, choices, max_new_tokens, decode_edits, max_rows=max_rows)
    return [method.checked(MethodResult(generation, extras=rows))
            for method, generation, rows in zip(methods, generations, extras)]
