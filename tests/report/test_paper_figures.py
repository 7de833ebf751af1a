"""Figures and tables that drop into a paper: column widths, legends outside the data, y ranges
holding every point, the papers' numbers as marks that never set the range, booktabs tables with
caption, label and decimal alignment, and an unfinished study marked PARTIAL."""
import re

import numpy as np
import pytest

from runners.report import figures
from test_figures import _study


def _curves(start, end, epochs=6):
    return {e: start + (end - start) * (e - 1) / (epochs - 1) for e in range(1, epochs + 1)}


@pytest.fixture
def drawn(tmp_path, monkeypatch):
    """A CPU-scale study (errors ~50%, ResNet-20's paper number 8.75%) drawn, its figures kept."""
    figs, save = {}, figures.save_figure

    def keep(fig, out, stem):
        figs[stem] = fig
        return save(fig, out, stem)

    monkeypatch.setattr(figures, "save_figure", keep)
    seeds = lambda a, b: [_curves(a + 0.01 * s, b + 0.01 * s) for s in range(3)]  # noqa: E731
    study = _study({("none", 8): seeds(0.89, 0.50), ("A", 8): seeds(0.88, 0.49),
                    ("none", 20): seeds(0.90, 0.60), ("A", 20): seeds(0.90, 0.52)})
    for v, runs in study.by_variant.items():  # the axes as params too: how the papers' numbers are found
        for r in runs:
            r.params.update({"family": "cifar", "depth": str(v.depth), "block": "basic", "shortcut": v.shortcut,
                             "preact": "false", "width": "1"})
    (tmp_path / "ablation.png").write_bytes(b"an earlier draw")  # not drawn now: must not stay
    written, _, _ = figures.write_all(study, tmp_path, partial="12 of 30 runs finished, the study KILLED")
    return figs, tmp_path, written


@pytest.mark.slow
def test_figures_fit_a_paper_column_hold_every_point_and_keep_legends_off_the_data(drawn):
    figs, _, _ = drawn
    for stem in ("curves", "curves_by_depth", "final_error_vs_depth"):
        fig = figs[stem]
        assert fig.get_size_inches()[0] in (figures.ONE_COLUMN, figures.TWO_COLUMNS), stem
        fig.draw_without_rendering()
        for ax in fig.axes:
            lo, hi = ax.get_ylim()
            for line in ax.get_lines():
                ys = np.asarray(line.get_ydata(), float)
                if line.get_transform().contains_branch(ax.transData) and ys.size:
                    assert lo <= np.nanmin(ys) and np.nanmax(ys) <= hi, (stem, line.get_label())
            legend = ax.get_legend()
            if legend is not None:  # below the axes, never over the curves
                assert not legend.get_window_extent().overlaps(ax.get_window_extent()), stem
        assert fig.get_suptitle().startswith("PARTIAL (12 of 30 runs finished, the study KILLED): "), stem
    assert figs["curves"].get_size_inches()[0] == figures.TWO_COLUMNS  # plain and residual panels


@pytest.mark.slow
def test_the_papers_number_is_a_mark_at_the_edge_not_the_range(drawn):
    figs, _, _ = drawn
    test_ax = figs["final_error_vs_depth"].axes[1]
    lo, _ = test_ax.get_ylim()
    assert lo > 40  # set by our ~50% errors, not stretched down to the paper's 8.75%
    assert "8.75%" in [t.get_text() for t in test_ax.texts]  # the value, written at the edge
    labels = [t.get_text() for t in figs["final_error_vs_depth"].legends[0].get_texts()]
    assert any("He 2016a" in t and "off the axis" in t for t in labels)


@pytest.mark.slow
def test_tables_are_booktabs_with_caption_label_and_aligned_numbers_and_say_partial(drawn):
    _, out, written = drawn
    tex = (out / "variants.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "\\caption{Final error per variant (PARTIAL: 12 of 30 runs finished, the study KILLED).}" in tex
    assert "\\label{tab:inproc-variants}" in tex
    spec = re.search(r"\\begin\{tabular\}\{(.*)\}\n", tex)[1]
    assert spec.startswith("l") and "r@{}l" in spec  # the names left, the numbers on their point
    row = next(ln for ln in tex.splitlines() if ln.startswith("plain-8 &"))
    assert " & 0 & .08M" in row or ".0" in row  # a number split at its decimal point
    assert "(PARTIAL: 12 of 30" in (out / "variants.md").read_text().splitlines()[0]
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# inproc: figures and tables from MLflow (PARTIAL)")
    assert "**Partial: 12 of 30 runs finished, the study KILLED.**" in summary
    # The earlier draw's figure that this draw did not make is gone, and the summary says so.
    assert not (out / "ablation.png").exists() and "- ablation.png" in summary.split("## Removed")[1]
    assert all(p.exists() for p in written)
