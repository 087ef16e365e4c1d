"""The result file's typed layout and schema version: written with it, read back through one
reader, older layouts read, unknown versions refused with the rerun command."""

import json

import pytest

from cytofm.errors import InputDataError
from cytofm.results import RESULT_VERSION, ResultFile, ResultVersionError, read_result, write_result

RESULT = {
    "task": "t",
    "dataset": "d",
    "backbone": "b",
    "protocol": "linear",
    "classes": ["x", "y"],
    "split": {"n_test": 4},
    "results": [{"shots": None, "summary": {"accuracy": {"mean": 0.5}}, "runs": []}],
    "skipped": [],
    "seconds": 1.5,
    "provenance": {"stage": "evaluate"},
    "test_rows": [0, 1, 2, 3],
}


def test_written_with_its_version_and_read_back(tmp_path):
    path = tmp_path / "r.json"
    write_result(path, RESULT)
    on_disk = json.loads(path.read_text())
    assert on_disk["schema"] == {"name": "cytofm.eval-result", "version": RESULT_VERSION}
    assert read_result(path) == on_disk
    typed = ResultFile.from_dict(on_disk)
    assert typed.results[0].shots is None and typed.optional == {"test_rows": [0, 1, 2, 3]}
    assert typed.level == "patch"


def test_files_from_before_the_version_are_read(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps(RESULT))  # version 1: the same fields, no "schema"
    assert read_result(path)["task"] == "t"


def test_an_unknown_version_says_which_and_how_to_rerun(tmp_path):
    path = tmp_path / "new.json"
    path.write_text(json.dumps({"schema": {"name": "cytofm.eval-result", "version": 7}, **RESULT}))
    with pytest.raises(ResultVersionError, match=r"version 7; this cytofm reads versions \[1, 2\]"):
        read_result(path)
    with pytest.raises(ResultVersionError, match="--forcerun evaluate mil"):
        read_result(path)


def test_a_file_without_its_fields_is_refused_before_it_is_written(tmp_path):
    bad = {k: v for k, v in RESULT.items() if k != "split"}
    with pytest.raises(InputDataError, match=r"needs \['split'\]"):
        write_result(tmp_path / "bad.json", bad)
    assert not (tmp_path / "bad.json").exists()
    broken = {**RESULT, "results": [{"shots": 1}]}
    with pytest.raises(InputDataError, match=r"results\[0\] lacks \['summary', 'runs'\]"):
        write_result(tmp_path / "bad.json", broken)
