"""Every malformed record is reported as ``file:line: message``; policies error and skip."""

from __future__ import annotations

import logging
import re

import pandas as pd
import pytest

from router_pipelines.data.sources import read_records
from router_pipelines.data.validation import DataValidationError, Problem, format_problems

GOOD = {"text": "a perfectly good document"}


def _error(path, cfg) -> str:
    with pytest.raises(DataValidationError) as err:
        read_records(path, cfg)
    return str(err.value)


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ({"text": ""}, "field 'text' is empty"),
        ({"text": " \n\t "}, "field 'text' is empty"),
        ({"text": 12}, "field 'text' must be a string, got int"),
        ({"text": None}, "field 'text' must be a string, got null"),
        ({"body": "no text field"}, "missing field 'text'"),
        ({"text": "fine", "url": 3}, "field 'url' must be a string, got int"),
        ('{"text": "unterminated', "invalid JSON: Unterminated string"),
        ("[1, 2]", "expected a JSON object, got list"),
        (b'{"text": "caf\xe9"}', "not valid UTF-8 at byte 13"),
    ],
)
def test_each_bad_record_is_located(write_jsonl, make_cfg, bad_line, message):
    path = write_jsonl([GOOD, GOOD, bad_line, GOOD])
    text = _error(path, make_cfg())
    assert f"{path}:3: {message}" in text
    assert "1 invalid record(s) of 4" in text


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ({"messages": "hi"}, "field 'messages' must be a list of turns, got str"),
        ({"messages": []}, "field 'messages' is an empty list"),
        ({"messages": ["hi"]}, "messages[1] must be an object, got str"),
        ({"messages": [{"role": "user"}]}, "missing messages[1] field 'content'"),
        ({"messages": [{"role": "user", "content": 5}]}, "field 'content' must be a string"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[1] has unknown role 'bot'"),
        ({"messages": [{"role": "user", "content": "only a question"}]}, "no assistant message"),
        ({"conversations": [{"from": "robot", "value": "x"}]}, "has unknown 'from' 'robot'"),
        ({"prompt": "question only"}, "missing field 'response'"),
        ({"prompt": "q", "response": "  "}, "field 'response' is empty"),
        ({"question": "q"}, "no chat fields"),
    ],
)
def test_bad_chat_records_are_located(write_jsonl, make_cfg, bad_line, message):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = write_jsonl([good, bad_line])
    text = _error(path, make_cfg(mode="instruction"))
    assert f"{path}:2: " in text
    assert message in text


def test_empty_file_is_an_error_under_both_policies(tmp_path, make_cfg):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    for policy in ("error", "skip"):
        assert f"{path}: file is empty" in _error(path, make_cfg(on_invalid=policy))
    path.write_bytes(b"\n  \n\n")  # blank lines hold no record
    assert "file is empty" in _error(path, make_cfg())


def test_missing_file_names_the_path(tmp_path, make_cfg):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        read_records(missing, make_cfg())


def test_error_lists_twenty_problems_and_the_count(write_jsonl, make_cfg):
    path = write_jsonl([GOOD] + [{"text": ""}] * 25)
    text = _error(path, make_cfg())
    assert "25 invalid record(s) of 26" in text
    assert f"{path}:2: field 'text' is empty" in text
    assert f"{path}:21: " in text and f"{path}:22: " not in text
    assert "... and 5 more" in text
    assert "on_invalid: skip" in text


def test_error_is_a_value_error():
    assert issubclass(DataValidationError, ValueError)


def test_skip_policy_counts_logs_and_keeps_the_rest(write_jsonl, make_cfg, caplog):
    path = write_jsonl([GOOD, {"text": ""}, b"\xff\xfe", {"text": "second good one"}, "{"])
    with caplog.at_level(logging.WARNING, logger="router_pipelines.data.validation"):
        records = read_records(path, make_cfg(on_invalid="skip"))
    assert records["text"].tolist() == ["a perfectly good document", "second good one"]
    assert records.attrs["ingest"] == {
        "source": str(path),
        "records_read": 5,
        "records_skipped": 3,
    }
    logged = caplog.text
    assert f"{path}:2: field 'text' is empty" in logged
    assert f"{path}:3: not valid UTF-8" in logged
    assert f"{path}:5: invalid JSON" in logged
    assert "skipped 3 invalid record(s) of 5" in logged


def test_skip_policy_with_nothing_left_raises(write_jsonl, make_cfg):
    path = write_jsonl([{"text": ""}, {"text": 1}])
    text = _error(path, make_cfg(on_invalid="skip"))
    assert "no valid record left after skipping 2 of 2" in text
    assert f"{path}:2: field 'text' must be a string, got int" in text


def test_crlf_line_endings_and_bom_are_accepted(tmp_path, make_cfg):
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "one"}\r\n{"text": "two"}\r\n')
    assert read_records(path, make_cfg())["text"].tolist() == ["one", "two"]


def test_parquet_rows_are_located(tmp_path, make_cfg):
    path = tmp_path / "data.parquet"
    pd.DataFrame({"text": ["good text", "", "more text"]}).to_parquet(path)
    assert f"{path}:2: field 'text' is empty" in _error(path, make_cfg())


def test_unreadable_parquet_names_the_file(tmp_path, make_cfg):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    assert f"{path}: not a readable parquet file" in _error(path, make_cfg())


def test_text_file_bad_bytes_are_located(tmp_path, make_cfg):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"first block\nstill first\n\nsecond \xff block\n\nthird\n")
    assert f"{path}:4: not valid UTF-8 at byte 7" in _error(path, make_cfg())


def test_problem_formatting():
    assert (
        str(Problem("f.jsonl", 12, "field 'text' is empty")) == "f.jsonl:12: field 'text' is empty"
    )
    assert str(Problem("f.jsonl", None, "file is empty")) == "f.jsonl: file is empty"
    listed = format_problems([Problem("f", i, "bad") for i in range(1, 23)])
    assert listed.splitlines()[-1] == "  ... and 2 more"
