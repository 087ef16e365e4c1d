import pandas as pd
import pytest

from cytofm.errors import InputDataError
from cytofm.sheet import load_sheet, validate_sheet


def test_load_sheet_resolves_paths_and_mpp(tmp_path):
    (tmp_path / "slides.tsv").write_text(
        "slide_id\tpath\tmpp\tsplit\tcell_truth\n"
        "A-1\ta.svs\t\ttrain\ttruth/a.tsv\nB.2\t/abs/b.svs\t0.5\ttest\t\n"
    )
    df = load_sheet(tmp_path / "slides.tsv")
    assert df["path"].tolist() == [str(tmp_path / "a.svs"), "/abs/b.svs"]
    assert df["cell_truth"].tolist() == [str(tmp_path / "truth" / "a.tsv"), ""]
    assert pd.isna(df["mpp"][0]) and df["mpp"][1] == 0.5


@pytest.mark.parametrize(
    ("rows", "pattern"),
    [
        ({"slide_id": ["a"]}, r"missing required column\(s\) \['path'\]"),
        ({"slide_id": ["a b"], "path": ["x"]}, r"invalid slide_id \(line 2: 'a b'\)"),
        ({"slide_id": ["a.cells"], "path": ["x"]}, r"invalid slide_id .*must not end in '.cells'"),
        (
            {"slide_id": ["a", "a"], "path": ["x", "y"]},
            r"duplicate slide_id \('a' on lines \[2, 3\]\)",
        ),
        ({"slide_id": ["a"], "path": ["x"], "mpp": ["fast"]}, r"'mpp' of slide\(s\) \['a'\]"),
        ({"slide_id": ["a"], "path": ["x"], "mpp": [-1]}, r"'mpp' values must be in"),
        ({"slide_id": ["a"], "path": ["x"], "split": ["dev"]}, r"'split' values \['dev'\]"),
    ],
)
def test_sheet_errors_name_the_problem(rows, pattern):
    with pytest.raises(InputDataError, match=pattern):
        validate_sheet(pd.DataFrame(rows))


def test_missing_sheet_says_what_to_set(tmp_path):
    with pytest.raises(InputDataError, match="Set 'samples' in config.yaml"):
        load_sheet(tmp_path / "nope.tsv")
