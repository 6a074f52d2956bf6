"""The report of ``visfocus study``: one figure per analysis (``FIGURES``, drawn by ``visfocus.analysis.figures``) and
``report.md``, which shows each figure with its numbers. Reads only the numbers ``visfocus.study.analyse`` computed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from visfocus.organism import model_name

REPORT_FILE = "report.md"  # written into the study's folder, beside study.json and figures/

ALPHA_LABELS = {"alpha_low": "α < 1 (grid's smallest)", "alpha_high": "α > 1 (grid's largest)",
                "scaling_vis": "ScalingVis, chosen α", "adaptvis": "AdaptVis, chosen point"}
STATISTICS = {"image_share": "image share", "subject_box": "share on the subject's box",
              "reference_box": "share on the reference's box", "entropy": "image-attention entropy (nats)"}


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _signed(value: Any) -> str:
    return "–" if value is None or value != value else f"{value:+.3f}"


def _p(value: Any) -> str:
    """A p-value: four decimals, or an upper bound below 0.0001."""
    if value is None or value != value:
        return "–"
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def _args(args: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(args.items())) or "–"


def _fig_confidence(n: dict):
    from visfocus.analysis.figures import grouped_bar_figure

    per = n["confidence"]["per_relation"]
    return grouped_bar_figure(list(per), {"accuracy": [v["accuracy"] for v in per.values()],
                                          "mean confidence": [v["mean_confidence"] for v in per.values()]},
                              title="baseline: accuracy and confidence by relation", ylim=(0, 1.1))


def _fig_reliability(n: dict):
    from visfocus.analysis.figures import reliability_figure

    return reliability_figure(n["confidence"]["reliability"], title="baseline: reliability")


def _fig_attention(n: dict):
    from visfocus.analysis.figures import panels_figure

    panels = {title: {f"{who}{g} ({groups[g]['n']})": groups[g][key]
                      for subset, who in (("all", ""), ("rare", "rare relations only, ")) for groups in
                      [n["attention"][subset]] for g in ("correct", "incorrect") if key in groups[g]}
              for key, title in STATISTICS.items()}
    return panels_figure(panels, title="baseline attention of the answer row, by layer: right vs wrong answers")


def _fig_alpha_attention(n: dict):
    from visfocus.analysis.figures import panels_figure

    alpha = n["alpha"]
    return panels_figure({f"Δ {title}": {f"{ALPHA_LABELS[label]} ({_args(e['args'])})": e["shift"][key]
                                         for label, e in alpha.items() if key in e["shift"]}
                          for key, title in STATISTICS.items()}, zero_line=True,
                         title="what each run changes in the answer row's attention (run − baseline), by layer")


def _fig_alpha_flips(n: dict):
    from visfocus.analysis.figures import grouped_bar_figure

    alpha = n["alpha"]
    labels = ["\n".join([label, *(f"{k}={v}" for k, v in sorted(e["args"].items()))]) for label, e in alpha.items()]
    return grouped_bar_figure(labels, {"fixed": [e["flips"]["fixed"] for e in alpha.values()],
                                       "broken": [e["flips"]["broken"] for e in alpha.values()]},
                              title="samples fixed and broken against the baseline", ylabel="samples")


def _fig_branches(n: dict):
    from visfocus.analysis.figures import grouped_bar_figure

    branches = n["adaptvis"]["branches"]
    return grouped_bar_figure([f"α = {b['alpha']:g}\n{b['n']} samples" for b in branches],
                              {"baseline": [b["baseline_accuracy"] for b in branches],
                               "AdaptVis": [b["accuracy"] for b in branches]},
                              title="AdaptVis: accuracy of the samples each branch takes", ylim=(0, 1.1))


def _fig_smoothing(n: dict):
    from visfocus.analysis.figures import grouped_bar_figure

    bins = n["adaptvis"]["by_confidence"]
    alpha_low = n["adaptvis"]["chosen"]["alpha_low"]
    return grouped_bar_figure([f"{b['low']:.3f}–{b['high']:.3f}" for b in bins],
                              {"baseline": [b["baseline_accuracy"] for b in bins],
                               f"α = {alpha_low:g} everywhere": [b["smoothed_accuracy"] for b in bins]},
                              title="smoothing by the baseline's confidence (equal-count bins)", ylim=(0, 1.1),
                              ylabel="accuracy", xlabel="baseline confidence")


FIGURES: dict[str, Callable[[dict], Any]] = {
    "confidence_by_relation": _fig_confidence, "reliability": _fig_reliability,
    "attention_right_vs_wrong": _fig_attention, "alpha_attention": _fig_alpha_attention,
    "alpha_flips": _fig_alpha_flips, "adaptvis_branches": _fig_branches, "smoothing_by_confidence": _fig_smoothing}


def write_report(out: Path, numbers: dict) -> Path:
    """Draw every figure into ``out/figures`` and write ``out/report.md``; returns the report's path."""
    from visfocus.analysis.figures import save

    for name, draw in FIGURES.items():
        save(draw(numbers), out / "figures" / f"{name}.png")
    path = out / REPORT_FILE
    path.write_text("\n".join(markdown(numbers)) + "\n", encoding="utf-8")
    return path


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(_num(v) if not isinstance(v, str) else v for v in row) + " |" for row in rows), ""]


def summary_lines(n: dict) -> list[str]:
    """The study's headline numbers, for the terminal."""
    c = n["confidence"]
    lines = [f"{n['eval_task']}: baseline accuracy {_num(c['accuracy'])} on {c['n']} samples; rare relations "
             f"({', '.join(n['rare']) or 'none'}) {_num(c['rare']['accuracy'])}, common {_num(c['common']['accuracy'])}"
             f"; AUROC of confidence for correctness {_num(c['auroc_correct'])}, for common vs rare "
             f"{_num(c['auroc_common_vs_rare'])}"]
    for label, e in n["alpha"].items():
        lines.append(f"  {ALPHA_LABELS[label]:<26} {_args(e['args']):<40} {_num(e['baseline'])} → {_num(e['run'])}  "
                     f"Δ {_signed(e['delta'])} [{_signed(e['ci_low'])}, {_signed(e['ci_high'])}]  McNemar p "
                     f"{_p(e['mcnemar_p'])}  fixed {e['flips']['fixed']} / broken {e['flips']['broken']}")
    return lines


def _confidence_section(n: dict) -> list[str]:
    c = n["confidence"]
    rows = [[rel, v["n"], v["accuracy"], v["mean_confidence"]] for rel, v in c["per_relation"].items()]
    rows += [[f"**{g}** ({', '.join(c[g]['relations']) or '–'})", c[g]["n"], c[g]["accuracy"],
              c[g]["mean_confidence"]] for g in ("rare", "common")]
    return ["## 1. Confidence and accuracy by relation", "",
            "![accuracy and confidence by relation](figures/confidence_by_relation.png)",
            "![reliability](figures/reliability.png)", "",
            *_table(["relation", "n", "accuracy", "mean confidence"], rows),
            f"AUROC of confidence for a correct answer: **{_num(c['auroc_correct'])}**; for a common relation "
            f"against a rare one: **{_num(c['auroc_common_vs_rare'])}** (0.5: confidence says nothing about "
            f"rarity). ECE {_num(c['ece'])}.", ""]


def _attention_table(groups: dict) -> list[str]:
    layers = max((len(groups[g].get("image_share", [])) for g in ("correct", "incorrect")), default=0)
    rows = [[str(layer)] + [f"{_num(groups['correct'][key][layer])} / {_num(groups['incorrect'][key][layer])} "
                            f"({_num(groups['auroc'][key][layer])})" if key in groups["auroc"] else "–"
                            for key in STATISTICS] for layer in range(layers)]
    return _table(["layer", *STATISTICS.values()], rows)


def _attention_section(n: dict) -> list[str]:
    groups, rare = n["attention"]["all"], n["attention"]["rare"]
    return ["## 2. Where the baseline looks, right vs wrong", "",
            f"The answer row's attention, averaged over heads, per decoder layer: {groups['correct']['n']} right and "
            f"{groups['incorrect']['n']} wrong answers. Box shares are the fraction of the image attention on the "
            "image tokens whose patch overlaps the object's box. Wrong answers come mostly from the rare relations, "
            "whose scenes have another geometry, so the rare relations are also compared alone "
            f"({rare['correct']['n']} right, {rare['incorrect']['n']} wrong). Each cell: mean over right answers / "
            "over wrong ones (AUROC of the statistic for a right answer: 0.5 means no difference).", "",
            "![attention right vs wrong](figures/attention_right_vs_wrong.png)", "", "All samples:", "",
            *_attention_table(groups), "Rare relations only:", "", *_attention_table(rare)]


def _alpha_section(n: dict) -> list[str]:
    alpha = n["alpha"]
    rows = [[ALPHA_LABELS[label], _args(e["args"]), e["n"], e["baseline"], e["run"],
             f"{_signed(e['delta'])} [{_signed(e['ci_low'])}, {_signed(e['ci_high'])}]", _p(e["mcnemar_p"]),
             f"{e['flips']['fixed']} / {e['flips']['broken']}"] for label, e in alpha.items()]
    relations = sorted({rel for e in alpha.values() for rel in e["per_relation"]})
    per_rel = [[ALPHA_LABELS[label]] + [f"{e['per_relation'][r]['fixed']} / {e['per_relation'][r]['broken']}"
                                        if r in e["per_relation"] else "–" for r in relations]
               for label, e in alpha.items()]
    layers = max((len(v) for e in alpha.values() for k, v in e["shift"].items() if k != "n"), default=0)
    shift = [[ALPHA_LABELS[label], str(layer)] + [e["shift"][key][layer] if key in e["shift"] else None
                                                  for key in STATISTICS]
             for label, e in alpha.items() for layer in range(layers)]
    return ["## 3. What α < 1 and α > 1 do", "",
            "![attention shift](figures/alpha_attention.png)", "![fixed and broken](figures/alpha_flips.png)", "",
            *_table(["run", "arguments", "n", "baseline", "run accuracy", "Δ [95 % CI]", "McNemar p",
                     "fixed / broken"], rows),
            "Fixed / broken by relation (samples the run gets right that the baseline got wrong / the reverse):", "",
            *_table(["run", *relations], per_rel),
            "Heatmaps of each fixed and broken sample, beside the baseline's: `visfocus report "
            f"{n['runs']['alpha_low'].get('folder', 'RUN')} --vs {n['runs']['baseline'].get('folder', 'BASELINE')}` "
            "(and the same for the other runs).", "",
            "Mean shift per layer (run − baseline):", "", *_table(["run", "layer", *STATISTICS.values()], shift)]


def _adaptvis_section(n: dict) -> list[str]:
    a = n["adaptvis"]
    branches = [[f"α = {b['alpha']:g}", b["n"], b["baseline_accuracy"], b["accuracy"],
                 ", ".join(f"{k} {v}" for k, v in b["relations"].items())] for b in a["branches"]]
    bins = [[f"{b['low']:.3f}–{b['high']:.3f}", b["n"], b["baseline_accuracy"], b["smoothed_accuracy"],
             f"{b['fixed']} / {b['broken']}"] for b in a["by_confidence"]]
    return ["## 4. AdaptVis: the branches, and whether confidence says where smoothing helps", "",
            f"Chosen on the dev task: {_args(a['chosen'])}.", "",
            "![branches](figures/adaptvis_branches.png)",
            "![smoothing by confidence](figures/smoothing_by_confidence.png)", "",
            *_table(["branch", "samples", "baseline accuracy", "AdaptVis accuracy", "relations"], branches),
            f"ScalingVis at α = {a['chosen']['alpha_low']:g} on every sample, by the baseline's confidence:", "",
            *_table(["baseline confidence", "n", "baseline", "smoothed", "fixed / broken"], bins),
            "Among the samples smoothing flips, the AUROC of low baseline confidence for *fixed* rather than "
            f"*broken*: **{_num(a['auroc_low_confidence_fixed'])}** (0.5: confidence does not say where smoothing "
            "helps).", ""]


def _sweep_section(n: dict) -> list[str]:
    lines = ["## 0. The sweeps (chosen on the dev task)", ""]
    for name, s in n["sweeps"].items():
        best = max((t["metrics"].get(s["metric"]) or 0.0 for t in s["trials"]), default=None)
        lines.append(f"- `{name}`: {len(s['trials'])} grid points; dev baseline {_num(s['dev_baseline'][s['metric']])}"
                     f", best {_num(best)}; chosen {_args(s['chosen'])} (`{s['path']}`).")
    return lines + [""]


def markdown(n: dict) -> list[str]:
    head = [f"# visfocus study: {model_name(n['model'])}", "",
            f"Chosen on `{n['dev_task']}`, reported on `{n['eval_task']}`"
            + (f" (first {n['limit']} samples of each)" if n["limit"] else "") + ". Rare relations: "
            + (", ".join(n["rare"]) or "none") + ". Δ: paired bootstrap 95 % CI; p: exact McNemar.", ""]
    return [*head, *_sweep_section(n), *_confidence_section(n), *_attention_section(n), *_alpha_section(n),
            *_adaptvis_section(n)]
