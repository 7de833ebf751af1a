"""The tables of `ablate figures`: per variant, plain vs residual, degradation; CSV, Markdown, LaTeX.

They read a `runners.tracking.results.Study` (duck-typed: by_variant, runs, lines(), ignored).
Every table puts the papers' number beside a variant where a paper has one
(`runners.report.paper`), counts the fails (He 2016b's rule, `stats.FAIL_TEST_ERROR`: test error
above 20%, or diverged) as "fail k/N" beside every row, takes the median and best over all N
runs with a fail as the worst, corrects the p-values of each column with Holm's method, and
lists under it every way the runs' recipe differs from the papers', read from their params, and
every run of the store it left out, by reason.
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass

from . import paper
from .stats import FAIL_RULE, FAIL_TEST_ERROR, WILCOXON_MIN_PAIRS, holm, paired, summarize, welch

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


def fmt_float(x: float, digits: int = 4) -> str:
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


def p_holm(p: float, adjusted: float) -> str:
    """'raw / Holm-adjusted' p-value, short."""
    return "n/a" if p is None or not math.isfinite(p) else f"{pshort(p)} / {pshort(adjusted)}"


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


# A number's cell starts with a digit (or a sign, or an interval's bracket): "52.01 ± 1.21", "[53.46, 57.10]",
# "0/5", "0.27M". Such columns are aligned on their first decimal point by hand (two columns, r@{}l,
# the point starting the right one) rather than with siunitx's S columns, which parse one number
# per cell and would reject "52.01 ± 1.21 " or an interval.
_NUMBER = re.compile(r"^[\[(]?[-−+]?\d")


def _numeric(cells: list[str]) -> bool:
    shown = [c for c in cells if c not in ("", "n/a", "-")]
    return bool(shown) and all(_NUMBER.match(c) for c in shown)


def _split_point(cell: str) -> tuple[str, str]:
    i = cell.find(".")
    return (cell[:i], cell[i:]) if i >= 0 else (cell, "")


def to_latex(t: Table, label: str | None = None) -> str:
    """A booktabs table (\\usepackage{booktabs}) with the title as caption and `label`
    (tab:<label>), number columns aligned on the decimal point; the notes as comments below."""
    cols = list(zip(*t.rows)) if t.rows else [() for _ in t.headers]
    numeric = [_numeric(list(c)) for c in cols]
    spec = "".join("r@{}l" if n else "l" for n in numeric)
    head = " & ".join(f"\\multicolumn{{2}}{{c}}{{{_tex(h)}}}" if n else _tex(h) for h, n in zip(t.headers, numeric))
    lines = ["% " + t.title + " (needs \\usepackage{booktabs})", "\\begin{table}[t]", "\\centering", "\\small",
             f"\\caption{{{_tex(t.title)}.}}"] + ([f"\\label{{tab:{label}}}"] if label else []) + [
             f"\\begin{{tabular}}{{{spec}}}", "\\toprule", head + " \\\\", "\\midrule"]
    for r in t.rows:
        cells = []
        for c, n in zip(r, numeric):
            if n:
                whole, frac = _split_point(c)
                cells += [_tex(whole), _tex(frac)]
            else:
                cells.append(_tex(c))
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    lines += ["% " + n for n in t.notes]
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "±": r"$\pm$", "−": "$-$", "≥": r"$\geq$", "Δ": r"$\Delta$", "→": r"$\to$"}


def _tex(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(s))


# -- the tables of `ablate figures` ---------------------------------------------------------------
PCT = (0.0, 100.0)  # an error's range, in the tables' unit
FAIL_PCT = 100 * FAIL_TEST_ERROR  # He 2016b's fail, in the tables' unit


def _pct(runs, attr: str) -> list[float]:
    """Final errors in percent (the papers' unit); a failed (diverged) run is NaN: counted, not averaged."""
    return [100 * getattr(r, attr) if r.converged else math.nan for r in runs]


def _count(s: str | None) -> str:
    try:
        v = float(s)
    except (TypeError, ValueError):
        return "n/a"
    return f"{v / 1e9:.2f}G" if v >= 1e9 else f"{v / 1e6:.2f}M"


def _fail(summary) -> str:
    return summary.fail_text() or f"0/{summary.runs}"


def _test_summary(runs):
    """The final test errors (%) of `runs`: fails by He 2016b's rule, mean over the converged."""
    return summarize(_pct(runs, "final_test"), PCT, fail_above=FAIL_PCT)


def _ranked(x: float, digits: int) -> str:
    """A median or best over all runs: 'fail' where it lands on a fail (+inf)."""
    return "fail" if x == math.inf else fmt_float(x, digits) or "n/a"


def named(names: list[str], most: int = 8) -> str:
    """': a, b, c' (at most `most` names, then how many more); '' for none."""
    if not names:
        return ""
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ": " + ", ".join(names[:most]) + more


def fail_notes(study) -> list[str]:
    """The fail rule, and every run of the store this table does not hold, named by reason."""
    notes = [f"fail = {FAIL_RULE}; the rule is the paper's for CIFAR-10 trained to its full 64k iterations: "
             f"a short or small-scale run (the CPU demo) ends above {FAIL_PCT:g}% and counts as a fail although it "
             "trained, its error is still in the mean over converged runs"]
    names = getattr(study, "left_out", {})
    for reason, k in sorted(study.ignored.items()):
        why = " (crashed, killed or still running: never finished)" if reason.startswith("status ") else ""
        notes.append(f"left out: {k} run(s) with {reason}{why}{named(names.get(reason, []))}")
    return notes


def _iterations(r) -> float | None:
    its = r.curves.get("iteration")
    return its[max(its)] if its else None


def recipe_notes(runs) -> list[str]:
    """Every way these runs' recipe differs from the papers', with how many runs it applies to."""
    counts: dict[str, int] = {}
    for r in runs:
        for d in paper.recipe_differences(r.params, iterations=_iterations(r), precision=r.precision, device=r.device):
            counts[d] = counts.get(d, 0) + 1
    if not counts:
        return ["recipe vs the papers: no difference from the paper's recipe in the runs' params"]
    n = len(runs)
    return [f"recipe vs the papers: {d}" + ("" if k == n else f" ({k} of {n} runs)")
            for d, k in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _runs_of(study, variants) -> list:
    return [r for v in dict.fromkeys(variants) for r in study.by_variant[v]]


def paper_numbers(study) -> dict:
    """variant -> {paper: PaperNumber}; a variant's runs share an architecture, so its first
    run's params decide (its data name too: a study has one dataset)."""
    return {v: paper.lookup(runs[0].params) for v, runs in study.by_variant.items() if runs}


def _paper_header(p: str) -> str:
    return f"{p} test (%, {paper.STAT[p]})"


def variant_table(study) -> Table:
    multi = len(study.lines()) > 1
    refs = paper_numbers(study)
    shown = [p for p in paper.PAPERS if any(p in r for r in refs.values())]
    columns = ["family", "depth", "block", "shortcut", "preact", "width", "axes", "detail", "seeds", "diverged",
               "n", "fail", "fails", "train_error_mean_pct", "train_error_std_pct", "test_error_mean_pct",
               "test_error_std_pct", "test_error_ci_lo_pct", "test_error_ci_hi_pct", "test_error_median_pct",
               "test_error_best_pct", "num_params", "macs"]
    for p in paper.PAPERS:
        tag = p.split()[-1]
        columns += [f"paper_{tag}_pct", f"paper_{tag}_source"]
    headers = ["net", "fail", "train err. (%, converged)", "test err. (%, converged)", "test 95% CI (converged)",
               "median of N", "best of N"] + \
        [_paper_header(p) for p in shown] + ["params", "MACs"]
    csv_rows, rows = [], []
    for v, runs in study.by_variant.items():
        tr, te = summarize(_pct(runs, "final_train"), PCT), _test_summary(runs)
        first = runs[0].params
        ref = refs.get(v, {})
        csv_row = [v.family, str(v.depth), v.block, v.shortcut, "true" if v.preact else "false", v.width,
                   ";".join(f"{k}={x}" for k, x in v.extra), v.detail,
                   str(len(runs)), str(te.failed), str(te.n), _fail(te), str(te.fails),
                   fmt_float(tr.mean, 6), fmt_float(tr.std, 6), fmt_float(te.mean, 6), fmt_float(te.std, 6),
                   fmt_float(te.lo, 6), fmt_float(te.hi, 6), _ranked(te.median, 6), _ranked(te.best, 6),
                   first.get("num_params", ""), first.get("macs", "")]
        for p in paper.PAPERS:
            num = ref.get(p)
            csv_row += ["" if num is None else num.text(),
                        "" if num is None else f"{p} {num.tables}, {num.stat}"]
        csv_rows.append(csv_row)
        name = v.label(with_line=multi) + ("" if v.block == "basic" or multi else f" [{v.block}]")
        row = [name, _fail(te), pm(tr.mean, tr.std), pm(te.mean, te.std), interval(te.lo, te.hi),
               _ranked(te.median, 2), _ranked(te.best, 2)]
        for p in shown:
            num = ref.get(p)
            row.append("" if num is None else num.text() + (f" ({num.stat})" if "best" in num.stat or "mean" in num.stat
                                                             else ""))
        rows.append(row + [_count(first.get("num_params")), _count(first.get("macs"))])
    notes = ["final error = the last logged epoch; median and best (lowest) test error over ALL N runs, a fail "
             "counting as the worst, as the papers' 'median of 5' is taken ('fail': it lands on a fail); "
             "mean ± sample std and 95% CI (Student-t interval of the mean, clipped to [0, 100]) over the "
             "converged runs only (not diverged; a run above the fail threshold is in them)",
             "fail k/N = k of the N FINISHED runs fail (test error above 20%, or diverged: tagged diverged or a "
             "non-finite final error); 'fail' alone: every run did, as the papers write it; diverged runs are "
             "kept out of means and tests"] + fail_notes(study)
    for p in shown:
        tables = sorted({num.tables for r in refs.values() if (num := r.get(p))})
        notes.append(f"{p} ({', '.join(tables)}): CIFAR test error, {paper.STAT[p]}; set beside every variant "
                     "with the same depth, block, shortcut/activation form and shortcut option (A, B) as the "
                     "paper's net, whatever our recipe (below)")
    notes += recipe_notes(study.runs)
    return Table("Final error per variant", columns, headers, csv_rows, rows, notes)


def _twin(study, v):
    """The plain net a residual variant is compared with: same line and depth, same preact if any."""
    plains = [p for p in study.by_variant if not p.residual and p.line == v.line and p.depth == v.depth]
    same = [p for p in plains if p.preact == v.preact]
    return (same or plains or [None])[0]


def _holm_columns(cmps: list[dict], metrics, fields=("p_t", "p_wilcoxon")) -> list[dict]:
    """Holm-adjusted p-values per column (metric x test) over the rows of one table."""
    adj = [dict() for _ in cmps]
    for m in metrics:
        for f in fields:
            for i, a in enumerate(holm([getattr(c[m], f) for c in cmps])):
                adj[i][(m, f)] = a
    return adj


def _paired_by_seed(study, a, b) -> tuple[list[str], dict]:
    """Seeds where both variants converged, and the paired comparison a - b of their final test
    and training errors (pp) over those seeds."""
    ra = {r.seed: r for r in study.by_variant[a] if r.converged}
    rb = {r.seed: r for r in study.by_variant[b] if r.converged}
    seeds = [s for s in ra if s in rb]
    return seeds, {m: paired([100 * getattr(ra[s], f"final_{m}") for s in seeds],
                             [100 * getattr(rb[s], f"final_{m}") for s in seeds]) for m in ("test", "train")}


def _paired_table(study, found, title: str, columns: list[str], headers: list[str], first_note: str,
                  shown_name) -> Table:
    """One row per (v, reference, ...) of `found`: fails, then test and training Δ with interval
    and raw / Holm p-values (paired t, Wilcoxon from WILCOXON_MIN_PAIRS pairs)."""
    for m in ("test", "train"):
        columns = columns + [f"{m}_diff_pct", f"{m}_ci_lo_pct", f"{m}_ci_hi_pct", f"{m}_p_ttest",
                             f"{m}_p_ttest_holm", f"{m}_p_wilcoxon", f"{m}_p_wilcoxon_holm"]
    adj = _holm_columns([f[3] for f in found], ("test", "train"))
    headers = headers + ["Δ test (pp)", "95% CI", "p t / Holm", "p Wilcoxon / Holm", "Δ train (pp)", "95% CI",
                         "p t / Holm", "p Wilcoxon / Holm", "test used"]
    csv_rows, rows = [], []
    for (v, ref, seeds, cmp, fails), a in zip(found, adj):
        used = cmp["test"].test
        row = [v.family, v.block, v.width, str(v.depth), v.kind_label(), ref.kind_label(), str(len(seeds)), *fails,
               used]
        shown = [str(v.depth), shown_name(v, ref), str(len(seeds)), ", ".join(fails)]
        for m in ("test", "train"):
            c = cmp[m]
            row += [fmt_float(c.diff, 6), fmt_float(c.lo, 6), fmt_float(c.hi, 6), pval(c.p_t), pval(a[(m, "p_t")]),
                    pval(c.p_wilcoxon), pval(a[(m, "p_wilcoxon")])]
            shown += [fmt_float(c.diff, 2) or "n/a", interval(c.lo, c.hi), p_holm(c.p_t, a[(m, "p_t")]),
                      p_holm(c.p_wilcoxon, a[(m, "p_wilcoxon")])]
        csv_rows.append(row)
        rows.append(shown + [used])
    notes = [first_note + ", over seeds paired by the `seed` tag (same data order and split); converged (not "
             "diverged) runs only; fail k/N beside each row: test error above 20% or diverged",
             "paired t = scipy.stats.ttest_rel and its 95% t-interval; Wilcoxon signed-rank "
             f"(scipy.stats.wilcoxon) only with >= {WILCOXON_MIN_PAIRS} pairs; n/a with fewer than 2 pairs",
             f"p raw / Holm-adjusted over the {len(found)} comparison(s) of each p column of this table"]
    notes += fail_notes(study) + recipe_notes(_runs_of(study, (x for f in found for x in f[:2])))
    return Table(title, columns, headers, csv_rows, rows, notes)


def _comparisons(study, reference_of, reference_first: bool) -> list[tuple]:
    """(variant, its reference, seeds, paired comparison, fails of (reference, variant)) for every
    variant `reference_of` gives a reference; Δ = reference − variant if `reference_first`."""
    found = []
    for v in sorted(study.by_variant, key=lambda v: (v.line, v.depth, v.kind)):
        ref = reference_of(v)
        if ref is None:
            continue
        seeds, cmp = _paired_by_seed(study, *((ref, v) if reference_first else (v, ref)))
        found.append((v, ref, seeds, cmp, [_fail(_test_summary(study.by_variant[x])) for x in (ref, v)]))
    return found


def plain_vs_residual_table(study) -> Table | None:
    found = _comparisons(study, lambda v: _twin(study, v) if v.residual else None, reference_first=True)
    return _paired_table(
        study, found, "Plain vs residual at each depth",
        ["family", "block", "width", "depth", "residual", "plain", "pairs", "fail_plain", "fail_residual",
         "test_used"],
        ["depth", "residual net", "pairs (n)", "fail (plain, res.)"],
        "Δ = plain − residual final error in percentage points (> 0: the residual net is better)",
        lambda v, p: v.label() + ("" if p.preact == v.preact else " vs post-act plain"))


def _is_original(study, v) -> bool:
    """He 2016b's original unit (Fig. 2a / 4a): post-activation with an identity shortcut."""
    runs = study.by_variant[v]
    return v.residual and v.shortcut in ("A", "B") and bool(runs) and paper.form_of(runs[0].params) == "original"


def _original_of(study, v):
    """The original unit variant `v` is compared with: same line and depth, the same shortcut
    option where `v` has one (A, B), else option A first."""
    originals = [o for o in study.by_variant if o.line == v.line and o.depth == v.depth and o != v
                 and _is_original(study, o)]
    same = [o for o in originals if o.shortcut == v.shortcut]
    return (same or sorted(originals, key=lambda o: o.shortcut) or [None])[0]


def versus_original_table(study) -> Table | None:
    """He 2016b Tables 1-3 compare every shortcut kind and activation order with the original unit
    of the same depth: that comparison, by seed."""
    found = _comparisons(study, lambda v: _original_of(study, v) if v.residual and not _is_original(study, v)
                         else None, reference_first=False)
    return _paired_table(
        study, found, "Each variant vs the original unit at its depth (He 2016b Tables 1-3)",
        ["family", "block", "width", "depth", "variant", "original", "pairs", "fail_original", "fail_variant",
         "test_used"],
        ["depth", "variant vs original", "pairs (n)", "fail (orig., var.)"],
        "Δ = variant − original unit (post-activation, identity shortcut) final error in percentage points "
        "(> 0: the variant is worse, as He 2016b finds for every shortcut kind but identity)",
        lambda v, o: f"{v.kind_label()} vs {o.kind_label()}")


def degradation_table(study) -> Table | None:
    multi = len(study.lines()) > 1
    columns = ["family", "block", "width", "net", "shallow_depth", "deep_depth", "n_shallow", "n_deep",
               "fail_shallow", "fail_deep", "test_used", "train_change_pct", "train_ci_lo_pct", "train_ci_hi_pct",
               "train_p", "train_p_holm", "test_change_pct", "test_ci_lo_pct", "test_ci_hi_pct", "test_p",
               "test_p_holm"]
    found = []
    for line, variants in study.lines().items():
        for kind in sorted({v.kind for v in variants}):
            vs = sorted((v for v in variants if v.kind == kind), key=lambda v: v.depth)
            if len(vs) < 2:
                continue
            lo, hi = vs[0], vs[-1]
            cmp = {m: welch(_pct(study.by_variant[hi], f"final_{m}"), _pct(study.by_variant[lo], f"final_{m}"))
                   for m in ("train", "test")}
            found.append((line, lo, hi, cmp))
    adj = _holm_columns([f[3] for f in found], ("train", "test"), ("p_t",))
    headers = ["net", "depths", "n", "fail", "Δ train (pp)", "95% CI", "p / Holm", "Δ test (pp)", "95% CI",
               "p / Holm", "test used"]
    csv_rows, rows = [], []
    for (line, lo, hi, cmp), a in zip(found, adj):
        s_lo, s_hi = (_test_summary(study.by_variant[x]) for x in (lo, hi))
        name = lo.kind_label() + (f" [{line[0]}, {line[1]}, w{line[2]}]" if multi else "")
        used = cmp["train"].test
        row = [line[0], line[1], line[2], lo.kind_label(), str(lo.depth), str(hi.depth), str(s_lo.n), str(s_hi.n),
               _fail(s_lo), _fail(s_hi), used]
        shown = [name, f"{lo.depth} → {hi.depth}", f"{s_lo.n}, {s_hi.n}", f"{_fail(s_lo)}, {_fail(s_hi)}"]
        for m in ("train", "test"):
            c = cmp[m]
            row += [fmt_float(c.diff, 6), fmt_float(c.lo, 6), fmt_float(c.hi, 6), pval(c.p_t), pval(a[(m, "p_t")])]
            shown += [fmt_float(c.diff, 2) or "n/a", interval(c.lo, c.hi), p_holm(c.p_t, a[(m, "p_t")])]
        csv_rows.append(row)
        rows.append(shown + [used])
    notes = ["Δ = final error of the deepest − the shallowest net of each kind, in percentage points; "
             "Δ train > 0 is the degradation problem (He 2016a Sec. 4.1: deeper plain nets train worse)",
             "Welch's t-test (scipy.stats.ttest_ind, equal_var=False) and its 95% interval: different depths "
             "are independent runs, so seeds are not paired; converged (not diverged) runs only; fail k/N beside "
             "each row: test error above 20% or diverged",
             f"p raw / Holm-adjusted over the {len(found)} comparison(s) of each p column of this table"]
    notes += fail_notes(study) + recipe_notes(_runs_of(study, (x for f in found for x in f[1:3])))
    return Table("Degradation: shallowest to deepest net", columns, headers, csv_rows, rows, notes)

# He 2016a's ImageNet testings, and the metrics each is read from (runners/tracking/naming.py):
# 1-crop is the center crop (logged apart under 10-crop testing), 10-crop the configured
# evaluation with dataset.ten_crop, multi-scale the Table 4 test of the final net.
def _testing_keys(run, testing: str) -> tuple[str, str] | None:
    ten = run.params.get("data.ten_crop") == "true"
    if testing == "1-crop":
        return ("test_error_1crop", "test_error_top5_1crop") if ten else ("test_error", "test_error_top5")
    if testing == "10-crop":
        return ("test_error", "test_error_top5") if ten else None
    return "test_error_multiscale", "test_error_top5_multiscale"


def _final_pct(runs, key: str | None) -> list[float]:
    """A final metric of each converged run that logged it, in percent."""
    return [100 * r.finals[key] for r in runs if r.converged and key and key in r.finals]


def imagenet_table(study) -> Table | None:
    """He 2016a Tables 2-4 as measured: per ImageNet-family variant, top-1 and top-5 test error
    (the ImageNet validation set) under 1-crop, 10-crop and multi-scale testing, each the mean ±
    std over its converged runs, beside the paper's 10-crop (Tables 2-3) and multi-scale (Table 4)
    numbers for the same net. None without ImageNet-family runs."""
    variants = {v: runs for v, runs in study.by_variant.items() if v.family == "imagenet" and runs}
    if not variants:
        return None
    columns = ["depth", "block", "shortcut", "width", "detail", "n", "diverged"]
    for t in paper.TESTINGS:
        tag = t.replace("-", "")
        columns += [f"top1_{tag}_mean_pct", f"top1_{tag}_std_pct", f"top5_{tag}_mean_pct", f"top5_{tag}_std_pct",
                    f"runs_{tag}"]
    columns += ["paper_10crop_top1_pct", "paper_10crop_top5_pct", "paper_10crop_source",
                "paper_multiscale_top1_pct", "paper_multiscale_top5_pct", "paper_multiscale_source",
                "num_params", "macs"]
    headers = ["net", "n"] + [f"{t} top-1 / top-5 (%)" for t in paper.TESTINGS] + \
        ["He 2016a 10-crop (Tables 2-3)", "He 2016a multi-scale (Table 4)", "params", "MACs"]
    csv_rows, rows = [], []
    for v, runs in variants.items():
        first = runs[0].params
        ref = paper.imagenet_lookup(first)
        diverged = sum(r.diverged for r in runs)
        csv_row = [str(v.depth), v.block, v.shortcut, v.width, v.detail, str(len(runs)), str(diverged)]
        row = [v.label() + ("" if v.block == "basic" else f" [{v.block}]"), str(len(runs))
               + (f" ({diverged} diverged)" if diverged else "")]
        for t in paper.TESTINGS:
            keys = _testing_keys(runs[0], t)
            top1, top5 = (summarize(_final_pct(runs, k), PCT) for k in (keys or (None, None)))
            csv_row += [fmt_float(top1.mean, 6), fmt_float(top1.std, 6), fmt_float(top5.mean, 6),
                        fmt_float(top5.std, 6), str(top1.n)]
            row.append("" if not top1.n else pm(top1.mean, top1.std) + " / " + pm(top5.mean, top5.std))
        for t in ("10-crop", "multi-scale"):
            num = ref.get(t)
            csv_row += ["" if num is None else f"{num.top1:.2f}",
                        "" if num is None or num.top5 is None else f"{num.top5:.2f}",
                        "" if num is None else f"{paper.HE2016A} {num.tables}"]
            row.append("" if num is None else num.text())
        csv_row += [first.get("num_params", ""), first.get("macs", "")]
        csv_rows.append(csv_row)
        rows.append(row + [_count(first.get("num_params")), _count(first.get("macs"))])
    notes = ["top-1 / top-5 test error (%) on the test split (for ImageNet: its validation set, as the paper's "
             "tables), final epoch, mean ± sample std over the converged runs (n: runs; a column's runs are those "
             "that logged it)",
             "1-crop: the center crop (dataset.crop) of the image resized to dataset.resize (the paper's 224 of 256; "
             "under 10-crop testing, that crop of the ten); "
             "10-crop: four corners, center and their flips, softmax averaged (He 2016a Sec. 3.4); multi-scale: "
             "the final net fully convolutional on whole images at the spec's shorter sides (dataset.multi_scale; "
             "Table 4: 224, 256, 384, 480, 640), softmax averaged over scales (and mirror images with "
             "dataset.multi_scale_flip)",
             f"{paper.HE2016A}: Table 2 prints 10-crop top-1 only (plain and option-A 18/34); Table 3 10-crop top-1 / "
             "top-5; Table 4 single-model multi-scale top-1 / top-5; set beside the net of the same depth and "
             "shortcut (the 50/101/152 of option B, stride in the first 1x1), whatever our recipe (below)"]
    notes += fail_notes(study)[1:] + recipe_notes(_runs_of(study, variants))
    return Table("ImageNet: top-1 and top-5 error by testing (He 2016a Tables 2-4)", columns, headers, csv_rows,
                 rows, notes)


def summary_markdown(study, written: list[str], skipped: list[str], notes: list[str],
                     partial: str | None = None, removed: list[str] = ()) -> str:
    """`partial`: why the study is unfinished (its figures and tables say so too); `removed`: older
    files of an earlier draw that this one did not redraw, deleted so none is read as current."""
    runs = study.runs
    lines = [f"# {study.name}: figures and tables from MLflow" + (" (PARTIAL)" if partial else ""), ""]
    if partial:
        lines += [f"**Partial: {partial}.** Every figure and table below is of the runs finished so far; "
                  "rerun `ablate figures` when the study is done.", ""]
    lines += [f"- experiment id: {study.experiment_id}",
              f"- runs used: {len(runs)} FINISHED (stage confirm/train) in {len(study.by_variant)} variants, "
              f"of which {sum(r.diverged for r in runs)} diverged (counted, drawn as x, not averaged) and "
              f"{sum(not r.diverged and r.final_test > FAIL_TEST_ERROR for r in runs)} more ended above "
              f"{FAIL_PCT:g}% test error: fails by {FAIL_RULE.split(':')[0]} (kept in the means)"]
    names = getattr(study, "left_out", {})
    for reason, k in sorted(study.ignored.items()):
        lines.append(f"- not used: {k} run(s) with {reason}{named(names.get(reason, []))}")
    lines += ["", "## Written", ""] + ([f"- {w}" for w in written] or ["- nothing yet"])
    if removed:
        lines += ["", "## Removed (an earlier draw's, not redrawn now)", ""] + [f"- {r}" for r in removed]
    if skipped:
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in skipped]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
