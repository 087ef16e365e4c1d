"""Report parts: results tables (numbers and best marks), figures, the page."""

import numpy as np
import pandas as pd
import pytest

from cytofm.report.figures import embedding_map, plot_confusion, plot_fractions, project_2d
from cytofm.report.html import Figure, Section, render_page
from cytofm.report.tables import (
    overview_table,
    results_table,
    sentence,
    to_html,
    to_markdown,
)
from cytofm.results import write_result


def _row(backbone, protocol, shots, mean, fraction=None, task="t", std=0.01):
    row = {
        "task": task,
        "backbone": backbone,
        "protocol": protocol,
        "shots": shots,
        "fraction": fraction,
        "skipped": "",
    }
    for metric in ("balanced_accuracy", "auroc"):
        row.update(
            {
                f"{metric}_mean": mean,
                f"{metric}_std": std,
                f"{metric}_ci_low": mean - 0.1,
                f"{metric}_ci_high": mean + 0.1,
            }
        )
    return row


@pytest.fixture
def summary():
    return pd.DataFrame(
        [
            _row("a", "linear", "all", 0.8),
            _row("b", "linear", "all", 0.7),
            _row("a", "fewshot", 4, 0.5),
            _row("b", "fewshot", 4, 0.6),
            _row("a", "fewshot", 1, 0.3),
            _row("b", "fewshot", 1, 0.3),
            _row("a", "linear", "all", 0.6, fraction=0.25),
            _row("b", "linear", "all", 0.55, fraction=0.25),
            {**_row("a", "fewshot", 50, 0.0), "skipped": "too few"},
        ]
    )


def _comparison(protocol, block, diff, lo, hi, a="a", b="b", metric="balanced_accuracy"):
    return {
        "task": "t",
        "protocol": protocol,
        "block": block,
        "backbone": a,
        "versus": b,
        "versus_is_control": True,
        "metric": metric,
        "difference": diff,
        "ci_low": lo,
        "ci_high": hi,
        "p_value": 0.0004 if lo > 0 or hi < 0 else 0.4,
        "verdict": "better" if lo > 0 else "worse" if hi < 0 else "no difference",
    }


@pytest.fixture
def comparisons():
    return pd.DataFrame(
        [
            _comparison("linear", "all", 0.1, 0.04, 0.16),  # a ahead: bold
            _comparison("fewshot", "shots=1", 0.0, -0.05, 0.05),  # tie
            _comparison("fewshot", "shots=4", -0.1, -0.15, -0.05),  # b ahead: bold b
            _comparison("linear", "fraction=0.25", 0.05, -0.02, 0.12),  # higher mean, CI spans 0
        ]
    )


def test_results_table_rows_numbers_and_best(summary, comparisons):
    table = results_table(summary, comparisons=comparisons)
    assert table["setting"].tolist() == [
        "linear probe, all labels",
        "few-shot linear, 1 per class",
        "few-shot linear, 4 per class",
        "linear probe, 25% of training labels",
    ]  # skipped settings are left out, shots ascending
    # bold only where the paired difference excludes zero, not for the higher mean alone
    assert table["best"].tolist() == ["a", "", "b", ""]
    assert table["verdict"].iloc[3].startswith("a vs b: no difference (+0.050 [-0.020, +0.120]")
    assert table["verdict"].iloc[0] == "a ahead of b: +0.100 [+0.040, +0.160], p < 0.001"
    row = table.iloc[0]
    assert (row["a_mean"], row["a_std"], row["a_ci_low"], row["a_ci_high"]) == pytest.approx(
        (0.8, 0.01, 0.7, 0.9)
    )
    md = to_markdown(table)
    assert "| linear probe, all labels | **0.800 ± 0.010 [0.700, 0.900]** | 0.700 ±" in md
    assert md.count("**") == 2 * 2
    assert to_html(table).count('class="best"') == 2
    # without comparisons nothing is bolded: a higher mean is not a win
    assert set(results_table(summary)["best"]) == {""}


def test_reduced_budget_cells_say_so(summary):
    lora = pd.DataFrame(
        [
            {**_row("a", "lora", 1, 0.5), "budget": "60 of 150 steps"},
            {**_row("b", "lora", 1, 0.4), "budget": ""},
        ]
    )
    md = to_markdown(results_table(lora))
    assert "0.500 ± 0.010 [0.400, 0.600] (reduced budget: 60 of 150 steps)" in md
    assert md.count("reduced budget") == 1


def test_sentence_says_what_the_comparison_supports(summary, comparisons):
    table = results_table(summary, comparisons=comparisons)
    ahead = sentence("t", table.iloc[0], comparisons)
    assert ahead == (
        "t: on the linear probe, all labels, a is ahead of b in balanced accuracy by "
        "+0.100 [+0.040, +0.160], p < 0.001."
    )
    tie = sentence("t", table.iloc[1], comparisons)
    assert "shows no difference" in tie and "do not rank them" in tie
    assert "no paired comparison" in sentence("t", table.iloc[0], None)


def test_slide_tasks_use_auroc_and_the_average_skips_them(summary):
    mil = pd.DataFrame(
        [_row("a", "abmil", "all", 0.9, task="s"), _row("b", "abmil", "all", 0.4, task="s")]
    )
    tables = {
        "t": results_table(summary),
        "t2": results_table(summary.assign(task="t2")),
        "s": results_table(mil),
    }
    assert tables["s"]["metric"].tolist() == ["auroc"]
    overview = overview_table(tables)
    assert overview["task"].tolist() == ["t", "t2", "s", "average (patch tasks)"]
    avg = overview.iloc[-1]
    assert avg["a_mean"] == pytest.approx(0.8) and avg["b_mean"] == pytest.approx(0.7)


def _result(tmp_path, backbone, cms, protocol="linear"):
    path = tmp_path / f"{backbone}_{protocol}.json"
    runs = [{"test": {"confusion_matrix": cm}} for cm in cms]
    write_result(
        path,
        {
            "task": "t",
            "dataset": "d",
            "backbone": backbone,
            "protocol": protocol,
            "classes": ["x", "y"],
            "split": {"n_test": 8},
            "results": [{"shots": None, "summary": {}, "runs": runs}],
            "skipped": [],
            "seconds": 0.0,
            "provenance": {},
        },
    )
    return path


def test_confusion_matrices_only_for_the_linear_probe(tmp_path):
    a = _result(tmp_path, "a", [[[3, 1], [0, 4]]])
    fewshot = _result(tmp_path, "a", [[[1, 1], [1, 1]]], protocol="fewshot")
    out = plot_confusion([a, fewshot], tmp_path / "cm.png")
    assert out.stat().st_size > 5000
    assert plot_confusion([fewshot], tmp_path / "none.png") is None


def test_fraction_curve_only_when_configured(summary, tmp_path):
    assert plot_fractions(summary, tmp_path / "f.png").stat().st_size > 5000
    assert plot_fractions(summary.assign(fraction=None), tmp_path / "g.png") is None


def test_projection_is_seeded_and_pca_is_the_fallback():
    x = np.random.default_rng(0).normal(size=(60, 8))
    a, method = project_2d(x, "pca", seed=1)
    b, _ = project_2d(x, "pca", seed=1)
    assert method == "PCA" and a.shape == (60, 2) and np.array_equal(a, b)


def test_umap_map_keeps_clusters_apart_and_is_seeded():
    """The UMAP path (exact neighbours handed to umap-learn): two separated groups stay apart
    in 2-D and the same seed gives the same map."""
    pytest.importorskip("umap", reason="umap-learn not installed (pip install '.[umap]')")
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (150, 16)), rng.normal(4, 1, (150, 16))])
    a, method = project_2d(x, "umap", seed=3)
    b, _ = project_2d(x, "umap", seed=3)
    assert method == "UMAP" and a.shape == (300, 2) and np.allclose(a, b)
    d = np.linalg.norm(a[:, None] - a[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    same = (d.argmin(axis=1) < 150) == (np.arange(300) < 150)
    assert same.mean() > 0.98


def test_embedding_map_shares_one_projection_across_colourings(tmp_path):
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(0, 1, (40, 6)), rng.normal(5, 1, (40, 6))])
    classes = np.repeat(["a", "b"], 40)
    slides = np.tile(["s1", "s2"], 40)
    out, method = embedding_map(
        [(feats, classes, "class"), (feats, slides, "slide")], tmp_path / "e.png", "t", "pca"
    )
    assert out.stat().st_size > 5000 and method == "PCA"


def test_page_escapes_and_counts_images(tmp_path):
    sec = Section("s", "A <b> title", intro="intro", figures=[Figure("f.png", "x<y")])
    page = render_page("report", {"commit": "abc"}, [sec], tmp_path / "index.html").read_text()
    assert "A &lt;b&gt; title" in page and 'alt="x&lt;y"' in page
    assert "data-broken-images" in page and 'href="#s"' in page
