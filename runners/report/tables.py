"""The tables of `ablate figures`: per variant, plain vs residual, degradation; CSV, Markdown, LaTeX.

They read a `runners.tracking.results.Study` (duck-typed: by_variant, runs, lines(), ignored).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

from .stats import WILCOXON_MIN_PAIRS, paired, summarize, welch

# -- tables -------------------------------------------------------------------------------------
# A table is (columns, rows, notes): rows are lists of already-formatted strings, so the three
# renderings hold the same digits and the files are byte-stable for a given store.

@dataclass
class Table:
    title: str
    columns: list[str]  # CSV header (machine names)
    headers: list[str]  # Markdown / LaTeX header (human names)
    csv_rows: list[list[str]]  # full precision
    rows: list[list[str]]  # display precision
    notes: list[str]


def num(x: float, digits: int = 4) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def pval(p: float) -> str:
    return "n/a" if p is None or not math.isfinite(p) else f"{p:.6g}"


def pshort(p: float) -> str:
    return "n/a" if p is None or not math.isfinite(p) else f"{p:.3g}"


def pm(mean: float, std: float, digits: int = 2) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if math.isfinite(std) else "")


def interval(lo: float, hi: float, digits: int = 2) -> str:
    return "n/a" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def to_csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(t.columns)
    w.writerows(t.csv_rows)
    return buf.getvalue()


def to_markdown(t: Table) -> str:
    lines = [f"### {t.title}", "", "| " + " | ".join(t.headers) + " |",
             "|" + "|".join("---" for _ in t.headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in t.rows]
    if t.notes:
        lines += [""] + [f"- {n}" for n in t.notes]
    return "\n".join(lines) + "\n"


def to_latex(t: Table) -> str:
    lines = ["% " + t.title, "\\begin{tabular}{" + "l" * len(t.headers) + "}", "\\toprule",
             " & ".join(_tex(h) for h in t.headers) + " \\\\", "\\midrule"]
    lines += [" & ".join(_tex(c) for c in r) + " \\\\" for r in t.rows]
    lines += ["\\bottomrule", "\\end{tabular}"]
    lines += ["% " + n for n in t.notes]
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "±": r"$\pm$", "−": "$-$", "≥": r"$\geq$"}


def _tex(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(s))


# -- the tables of `ablate figures` ---------------------------------------------------------------

# He 2016a Table 6, CIFAR-10 test error (%) of the option-A ResNets; plain nets appear only as
# curves (Fig. 6), so there is nothing to put beside ours for them.
PAPER_TABLE6 = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
PAPER_NOTES = {110: "best of 5 runs; 6.61 ± 0.16 mean ± std over 5 runs"}


def paper_recipe(params: dict) -> bool:
    """The run used CIFAR-10 in full with the paper's recipe (64k iterations, lr 0.1, batch 128)."""
    def val(key):
        v = params.get(key, "none")
        return None if v in ("none", "", None) else _float(v)
    its, epochs = val("train.iterations"), val("train.epochs")
    long_enough = (its == 64000 or (epochs is not None and epochs >= 160)
                   or (its is None and epochs is None))  # neither given: TrainConfig's 64k default
    return (params.get("data.name") == "cifar10" and params.get("data.subset", "none") == "none"
            and long_enough and val("train.lr") == 0.1 and val("train.batch_size") == 128)


def paper_reference(v, runs) -> float | None:
    if (v.family, v.block, v.shortcut, v.preact, _float(v.width)) != ("cifar", "basic", "A", False, 1.0):
        return None
    if v.depth not in PAPER_TABLE6 or not runs or not all(paper_recipe(r.params) for r in runs):
        return None
    return PAPER_TABLE6[v.depth]


def paper_reference_points(study) -> list[tuple[int, float]]:
    return [(v.depth, ref) for v, runs in study.by_variant.items()
            if (ref := paper_reference(v, runs)) is not None]


def _float(s) -> float:
    try:
        return float(s)
    except (TypeError, ValueError):
        return math.nan


def _pct(runs, attr: str) -> list[float]:
    """Final errors of the converged runs, in percent (the tables' unit, as in the paper)."""
    return [100 * getattr(r, attr) for r in runs if r.converged]


def _count(s: str | None) -> str:
    v = _float(s)
    if not math.isfinite(v):
        return "n/a"
    return f"{v / 1e9:.2f}G" if v >= 1e9 else f"{v / 1e6:.2f}M"


def variant_table(study) -> Table:
    multi = len(study.lines()) > 1
    refs = {v: paper_reference(v, runs) for v, runs in study.by_variant.items()}
    show_ref = any(r is not None for r in refs.values())
    columns = ["family", "depth", "block", "shortcut", "preact", "width", "seeds", "diverged", "n",
               "train_error_mean_pct", "train_error_std_pct", "test_error_mean_pct", "test_error_std_pct",
               "test_error_ci_lo_pct", "test_error_ci_hi_pct", "num_params", "macs", "paper_test_pct"]
    headers = ["net", "seeds", "diverged", "n", "train err. (%)", "test err. (%)", "test 95% CI",
               "params", "MACs"] + (["He 2016a test (%)"] if show_ref else [])
    csv_rows, rows = [], []
    for v, runs in study.by_variant.items():
        tr, te = summarize(_pct(runs, "final_train")), summarize(_pct(runs, "final_test"))
        first = runs[0].params
        ref = refs[v]
        csv_rows.append([v.family, str(v.depth), v.block, v.shortcut, "true" if v.preact else "false", v.width,
                         str(len(runs)), str(len(runs) - tr.n), str(tr.n),
                         num(tr.mean, 6), num(tr.std, 6), num(te.mean, 6), num(te.std, 6), num(te.lo, 6),
                         num(te.hi, 6), first.get("num_params", ""), first.get("macs", ""),
                         num(ref, 2) if ref is not None else ""])
        row = [v.label(with_line=multi) + ("" if v.block == "basic" else f" [{v.block}]"),
               str(len(runs)), str(len(runs) - tr.n), str(tr.n), pm(tr.mean, tr.std), pm(te.mean, te.std),
               interval(te.lo, te.hi), _count(first.get("num_params")), _count(first.get("macs"))]
        if show_ref:
            row.append("" if ref is None else f"{ref:.2f}" + (f" ({PAPER_NOTES[v.depth]})" if v.depth in PAPER_NOTES else ""))
        rows.append(row)
    notes = ["final error = the last logged epoch; mean ± sample std over the n converged seeds; "
             "95% CI = Student-t interval of the mean",
             "seeds = FINISHED runs; diverged runs are counted but not averaged"]
    if show_ref:
        notes.append("He 2016a Table 6 (CIFAR-10, option A, 64k iterations) beside runs with the same data and recipe")
    return Table("Final error per variant", columns, headers, csv_rows, rows, notes)


def _twin(study, v):
    """The plain net a residual variant is compared with: same line and depth, same preact if any."""
    plains = [p for p in study.by_variant if not p.residual and p.line == v.line and p.depth == v.depth]
    same = [p for p in plains if p.preact == v.preact]
    return (same or plains or [None])[0]


def plain_vs_residual_table(study) -> Table | None:
    columns = ["family", "block", "width", "depth", "residual", "pairs", "test_used"]
    for m in ("test", "train"):
        columns += [f"{m}_diff_pct", f"{m}_ci_lo_pct", f"{m}_ci_hi_pct", f"{m}_p_ttest", f"{m}_p_wilcoxon"]
    headers = ["depth", "residual net", "pairs (n)", "Δ test (pp)", "95% CI", "p (t)", "p (Wilcoxon)",
               "Δ train (pp)", "95% CI", "p (t)", "p (Wilcoxon)", "test used"]
    csv_rows, rows = [], []
    for v in sorted(study.by_variant, key=lambda v: (v.line, v.depth, v.kind)):
        p = _twin(study, v) if v.residual else None
        if p is None:
            continue
        plain = {r.seed: r for r in study.by_variant[p] if r.converged}
        res = {r.seed: r for r in study.by_variant[v] if r.converged}
        seeds = [s for s in plain if s in res]
        cmp = {m: paired([100 * getattr(plain[s], f"final_{m}") for s in seeds],
                         [100 * getattr(res[s], f"final_{m}") for s in seeds]) for m in ("test", "train")}
        used = cmp["test"].test
        row = [v.family, v.block, v.width, str(v.depth), v.kind_label(), str(len(seeds)), used]
        shown = [str(v.depth), v.label() + ("" if p.preact == v.preact else " vs post-act plain"), str(len(seeds))]
        for m in ("test", "train"):
            c = cmp[m]
            row += [num(c.diff, 6), num(c.lo, 6), num(c.hi, 6), pval(c.p_t), pval(c.p_wilcoxon)]
            shown += [num(c.diff, 2) or "n/a", interval(c.lo, c.hi), pshort(c.p_t), pshort(c.p_wilcoxon)]
        csv_rows.append(row)
        rows.append(shown + [used])
    notes = ["Δ = plain − residual final error in percentage points (> 0: the residual net is better), "
             "over seeds paired by the `seed` tag (same data order and split); converged runs only",
             "paired t = scipy.stats.ttest_rel and its 95% t-interval; Wilcoxon signed-rank "
             f"(scipy.stats.wilcoxon) only with >= {WILCOXON_MIN_PAIRS} pairs; n/a with fewer than 2 pairs"]
    return Table("Plain vs residual at each depth", columns, headers, csv_rows, rows, notes)


def degradation_table(study) -> Table | None:
    multi = len(study.lines()) > 1
    columns = ["family", "block", "width", "net", "shallow_depth", "deep_depth", "n_shallow", "n_deep",
               "test_used", "train_change_pct", "train_ci_lo_pct", "train_ci_hi_pct", "train_p",
               "test_change_pct", "test_ci_lo_pct", "test_ci_hi_pct", "test_p"]
    headers = ["net", "depths", "n", "Δ train (pp)", "95% CI", "p", "Δ test (pp)", "95% CI", "p", "test used"]
    csv_rows, rows = [], []
    for line, variants in study.lines().items():
        for kind in sorted({v.kind for v in variants}):
            vs = sorted((v for v in variants if v.kind == kind), key=lambda v: v.depth)
            if len(vs) < 2:
                continue
            lo, hi = vs[0], vs[-1]
            cmp = {m: welch(_pct(study.by_variant[hi], f"final_{m}"), _pct(study.by_variant[lo], f"final_{m}"))
                   for m in ("train", "test")}
            n_lo = sum(r.converged for r in study.by_variant[lo])
            n_hi = sum(r.converged for r in study.by_variant[hi])
            name = lo.kind_label() + (f" [{line[0]}, {line[1]}, w{line[2]}]" if multi else "")
            used = cmp["train"].test
            row = [line[0], line[1], line[2], lo.kind_label(), str(lo.depth), str(hi.depth), str(n_lo), str(n_hi), used]
            shown = [name, f"{lo.depth} → {hi.depth}", f"{n_lo}, {n_hi}"]
            for m in ("train", "test"):
                c = cmp[m]
                row += [num(c.diff, 6), num(c.lo, 6), num(c.hi, 6), pval(c.p_t)]
                shown += [num(c.diff, 2) or "n/a", interval(c.lo, c.hi), pshort(c.p_t)]
            csv_rows.append(row)
            rows.append(shown + [used])
    notes = ["Δ = final error of the deepest − the shallowest net of each kind, in percentage points; "
             "Δ train > 0 is the degradation problem (He 2016a Sec. 4.1: deeper plain nets train worse)",
             "Welch's t-test (scipy.stats.ttest_ind, equal_var=False) and its 95% interval: different depths "
             "are independent runs, so seeds are not paired; converged runs only"]
    return Table("Degradation: shallowest to deepest net", columns, headers, csv_rows, rows, notes)


def summary_markdown(study, written: list[str], skipped: list[str], notes: list[str]) -> str:
    runs = study.runs
    lines = [f"# {study.name}: figures and tables from MLflow", "",
             f"- experiment id: {study.experiment_id}",
             f"- runs used: {len(runs)} FINISHED (stage confirm/train) in {len(study.by_variant)} variants, "
             f"of which {sum(r.diverged for r in runs)} diverged (counted, drawn as x, not averaged)"]
    for reason, k in sorted(study.ignored.items()):
        lines.append(f"- not used: {k} run(s) with {reason}")
    lines += ["", "## Written", ""] + ([f"- {w}" for w in written] or ["- nothing yet"])
    if skipped:
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in skipped]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
