"""Local sources: C4 JSONL, the seed-002 chat formats, parquet and plain text."""

from __future__ import annotations

import pandas as pd
import pytest

from router_pipelines.data.sources import read_records

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
]


def test_c4_jsonl_keeps_url_and_timestamp(write_jsonl, make_cfg):
    path = write_jsonl(
        [
            {"text": "first doc", "url": "https://x.org/a", "timestamp": "2019-04-25T12:57:54Z"},
            {"text": "second doc"},
        ]
    )
    records = read_records(path, make_cfg())
    assert records["text"].tolist() == ["first doc", "second doc"]
    assert records.loc[0, "url"] == "https://x.org/a"
    assert records.loc[0, "timestamp"] == "2019-04-25T12:57:54Z"
    assert records.attrs["ingest"]["records_read"] == 2


@pytest.mark.parametrize(
    "record",
    [
        {"messages": CHAT},
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "What is 2+2?"},
                {"from": "gpt", "value": "4"},
            ]
        },
        {"dialog": CHAT},  # any field named by text_field
    ],
)
def test_chat_formats_normalise_to_messages(write_jsonl, make_cfg, record):
    text_field = "dialog" if "dialog" in record else "text"
    records = read_records(
        write_jsonl([record]),
        make_cfg(mode="instruction", text_field=text_field, format="chat_jsonl"),
    )
    assert records["messages"].tolist() == [CHAT]
    assert list(records.columns) == ["messages"]


def test_prompt_response_becomes_user_and_assistant(write_jsonl, make_cfg):
    records = read_records(
        write_jsonl([{"prompt": "Hi?", "response": "Hello."}]), make_cfg(mode="instruction")
    )
    assert records["messages"][0] == [
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
    ]


def test_field_list_in_instruction_mode(write_jsonl, make_cfg):
    rows = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
    ]
    cfg = make_cfg(mode="instruction", text_field=["instruction", "input", "output"])
    messages = read_records(write_jsonl(rows), cfg)["messages"].tolist()
    assert messages[0] == [
        {"role": "user", "content": "Add the numbers.\n2 and 3"},
        {"role": "assistant", "content": "5"},
    ]
    assert messages[1][0] == {"role": "user", "content": "Say hi."}  # empty input left out


def test_field_list_in_pretraining_mode_joins_with_newlines(write_jsonl, make_cfg):
    rows = [{"instruction": "Add.", "input": "", "output": "5"}]
    cfg = make_cfg(text_field=["instruction", "input", "output"])
    assert read_records(write_jsonl(rows), cfg)["text"].tolist() == ["Add.\n5"]


def test_chat_records_are_flattened_for_pretraining(write_jsonl, make_cfg):
    records = read_records(write_jsonl([{"messages": CHAT}]), make_cfg())
    assert records["text"].tolist() == ["Be brief.\nWhat is 2+2?\n4"]


def test_parquet_with_a_custom_field(tmp_path, make_cfg):
    path = tmp_path / "corpus.parquet"
    pd.DataFrame({"body": ["alpha text", "beta text"], "other": [1, 2]}).to_parquet(path)
    records = read_records(path, make_cfg(text_field="body"))
    assert records["text"].tolist() == ["alpha text", "beta text"]


def test_text_file_one_document_per_paragraph_block(tmp_path, make_cfg):
    path = tmp_path / "notes.txt"
    path.write_text("first line\nsecond line\n\n\nnext block\n  \nlast\n", encoding="utf-8")
    records = read_records(path, make_cfg())
    assert records["text"].tolist() == ["first line\nsecond line", "next block", "last"]


def test_unknown_suffix_asks_for_a_format(tmp_path, make_cfg):
    path = tmp_path / "corpus.csv"
    path.write_text("text\nhello\n")
    with pytest.raises(ValueError, match=r"format: cannot infer .*'\.csv'.*set data\.format"):
        read_records(path, make_cfg())
    path.write_text('{"text": "hello there"}\n')
    assert read_records(path, make_cfg(format="jsonl"))["text"].tolist() == ["hello there"]


def test_text_files_cannot_feed_instruction_mode(tmp_path, make_cfg):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    with pytest.raises(ValueError, match="cannot feed mode 'instruction'"):
        read_records(path, make_cfg(mode="instruction"))
