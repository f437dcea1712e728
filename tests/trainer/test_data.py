"""Instruction data: the chapter's split, tokenization and collate, bad files, a URL source."""

from __future__ import annotations

import http.server
import socket
import threading

import orjson
import pytest
import torch

from instruct import EntryError, format_input, format_prompt, read_entries
from trainer.training.data import (
    InstructionDataset,
    collate,
    count_truncated,
    data_file,
    split_entries,
    split_indices,
    tokenize,
)
from trainer.gpt2.fetch import DownloadError
from trainer.gpt2.tokenizer import get_tokenizer

# Entry 0 of the chapter's instruction-data.json as the chapter's InstructionDataset formats it.
CHAPTER_ENTRY_0 = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\nEvaluate the following phrase by transforming "
    "it into the spelling given.\n\n### Input:\nfreind --> friend\n\n### Response:\nThe spelling "
    'of the given phrase "freind" is incorrect, the correct spelling is "friend".'
)


@pytest.fixture(scope="module")
def gpt2(tokenizer_dir):
    return get_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def entries(instruction_data):
    return read_entries(instruction_data)


@pytest.fixture(scope="module")
def dataset(entries, gpt2):
    return InstructionDataset(tokenize(entries, gpt2))


def test_a_local_file_is_read_where_it_is(instruction_data):
    assert data_file(str(instruction_data)) == instruction_data
    entries = read_entries(instruction_data)
    assert entries == orjson.loads(instruction_data.read_bytes())
    assert len(entries) == 1100


def test_jsonl_source(entries, tmp_path):
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_bytes(b"\n".join(orjson.dumps(entry) for entry in entries[:3]) + b"\n")
    assert read_entries(jsonl) == entries[:3]


def test_jsonl_is_streamed_entry_by_entry(entries, tmp_path):
    """iter_entries hands out each JSONL entry as its line is read: an error on line 3 comes after
    the first two entries (a JSON list is parsed whole first)."""
    from instruct import iter_entries

    jsonl = tmp_path / "data.jsonl"
    jsonl.write_bytes(b"\n".join(orjson.dumps(entry) for entry in entries[:2]) + b"\n{broken\n")
    seen = []
    with pytest.raises(EntryError, match="line 3 is not valid JSON"):
        for entry in iter_entries(jsonl):
            seen.append(entry)
    assert seen == entries[:2]


def test_split_indices_are_the_entries_split(entries):
    """The run splits indices; they pick exactly the entries split_entries picks, seeded or not."""
    for seed in (None, 123):
        parts = split_indices(len(entries), seed=seed)
        assert all(p.dtype == "int64" for p in parts)
        assert tuple([entries[i] for i in part] for part in parts) == split_entries(entries, seed=seed)
    assert [len(p) for p in split_indices(1_000_000)] == [850_000, 100_000, 50_000]


def test_chapter_split(entries):
    train, test, val = split_entries(entries)
    assert (len(train), len(test), len(val)) == (935, 110, 55)
    # In file order, as the chapter: data[:935], data[935:1045], data[1045:].
    assert train == entries[:935] and test == entries[935:1045] and val == entries[1045:]


def test_seeded_split_shuffles_reproducibly(entries):
    train, test, val = split_entries(entries, seed=123)
    assert (len(train), len(test), len(val)) == (935, 110, 55)
    assert split_entries(entries, seed=123) == (train, test, val)
    assert train != entries[:935]
    # A permutation: every entry lands in exactly one part (the texts are unique).
    assert sorted(map(orjson.dumps, train + test + val)) == sorted(map(orjson.dumps, entries))
    assert split_entries(entries, seed=7)[0] != train


@pytest.mark.parametrize("fractions", [(0.0, 0.1), (0.85, -0.1), (0.9, 0.1), (0.95, 0.1)])
def test_bad_split_fractions(entries, fractions):
    with pytest.raises(ValueError) as raised:
        split_entries(entries, fractions)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"split fractions {fractions[0]},{fractions[1]}: need two positive")


def test_split_leaving_an_empty_part(entries):
    # 5 entries: int(5 * 0.85) = 4 train, int(5 * 0.1) = 0 test.
    with pytest.raises(ValueError) as raised:
        split_entries(entries[:5])
    assert str(raised.value) == "5 entries split 0.85,0.1 leave an empty part (train 4, test 0, validation 1)"


def test_entry_0_is_the_chapter_text(dataset, gpt2):
    token_ids, prompt_length = dataset[0]
    assert gpt2.decode(token_ids) == CHAPTER_ENTRY_0
    prompt = CHAPTER_ENTRY_0[: CHAPTER_ENTRY_0.index("The spelling")]
    assert gpt2.decode(token_ids[:prompt_length]) == prompt


def test_tokens_equal_the_chapter_encoding(dataset, entries, gpt2):
    """The chapter's InstructionDataset: encode(format_input(entry) + response_text)."""
    assert len(dataset) == 1100
    for index, entry in enumerate(entries):
        full_text = format_input(entry) + f"\n\n### Response:\n{entry['output']}"
        assert dataset[index].token_ids == gpt2.encode(full_text)
        assert dataset[index].prompt_length == len(gpt2.encode(format_prompt(entry)))


def test_token_length_stats(dataset):
    lengths = dataset.lengths.tolist()
    assert lengths == [len(example.token_ids) for example in dataset]
    assert (min(lengths), max(lengths), sum(lengths)) == (40, 91, 62025)
    prompt_lengths = [example.prompt_length for example in dataset]
    assert (min(prompt_lengths), max(prompt_lengths)) == (35, 65)


def test_collate_chapter_example():
    inputs, targets = collate([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]])
    assert inputs.dtype == targets.dtype == torch.int64
    assert inputs.device.type == targets.device.type == "cpu"
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256], [7, 8, 9, 50256, 50256]]
    assert targets.tolist() == [[1, 2, 3, 4, 50256], [6, 50256, -100, -100, -100], [8, 9, 50256, -100, -100]]


def test_collate_mask_prompt():
    # Prompts of 3, 1 and 2 tokens: the first 2, 0 and 1 targets predict prompt tokens.
    inputs, targets = collate([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]], prompt_lengths=[3, 1, 2])
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256], [7, 8, 9, 50256, 50256]]
    assert targets.tolist() == [[-100, -100, 3, 4, 50256], [6, 50256, -100, -100, -100], [-100, 9, 50256, -100, -100]]


def test_collate_truncates_to_allowed_max_length():
    inputs, targets = collate([[0, 1, 2, 3, 4], [5, 6]], allowed_max_length=3)
    assert inputs.tolist() == [[0, 1, 2], [5, 6, 50256]]
    assert targets.tolist() == [[1, 2, 3], [6, 50256, -100]]
    # Exactly allowed_max_length tokens fit: the last input token predicts <|endoftext|>.
    inputs, targets = collate([[0, 1, 2]], allowed_max_length=3)
    assert (inputs.tolist(), targets.tolist()) == ([[0, 1, 2]], [[1, 2, 50256]])


def test_collate_batch_of_one_and_other_ids():
    inputs, targets = collate([[7, 8, 9]], pad_token_id=0, ignore_index=-1, allowed_max_length=None)
    assert (inputs.tolist(), targets.tolist()) == ([[7, 8, 9]], [[8, 9, 0]])
    inputs, targets = collate([[7, 8, 9], [1]], pad_token_id=0, ignore_index=-1)
    assert (inputs.tolist(), targets.tolist()) == ([[7, 8, 9], [1, 0, 0]], [[8, 9, 0], [0, -1, -1]])


def test_collate_needs_a_prompt_length_per_sequence():
    with pytest.raises(ValueError):
        collate([[0, 1, 2], [3, 4]], prompt_lengths=[1])


def test_count_truncated_agrees_with_collate(dataset):
    """count_truncated's numbers are what collate does to the real data at a short context."""
    max_length = 60
    longer = changed = eot_cut = 0
    for token_ids, _ in dataset:
        whole = collate([token_ids], allowed_max_length=None)
        inputs, targets = collate([token_ids], allowed_max_length=max_length)
        longer += len(token_ids + [50256]) > max_length
        changed += not (torch.equal(inputs, whole[0]) and torch.equal(targets, whole[1]))
        eot_cut += 50256 not in targets.tolist()[0]
    assert changed == eot_cut  # truncation costs exactly the examples whose <|endoftext|> it cuts
    assert count_truncated(dataset, max_length) == (longer, eot_cut) == (329, 289)
    # The longest examples have 91 tokens (3 of them): at 91 they fit, losing nothing.
    assert dataset.lengths.tolist().count(91) == 3 and dataset.lengths.tolist().count(90) == 0
    assert count_truncated(dataset, 92) == (0, 0)
    assert count_truncated(dataset, 91) == (3, 0)
    assert count_truncated(dataset, 90) == (3, 3)


def write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"[{\"instruction\": \"a\", \"output\": \"b\"},", ": not valid JSON ("),
        (b'[{"instruction": "a", "output": "b"}, {"instruction": "c"}]', ": entry 1: missing field 'output'"),
        (
            b'[{"instruction": "a", "input": 3, "output": "b"}]',
            ": entry 0: field 'input' must be a string, got int",
        ),
        (b"[]", ": holds no entries"),
    ],
    ids=["not-json", "missing-output", "int-input", "empty-list"],
)
def test_bad_files_are_one_line_errors(tmp_path, content, expected):
    path = write(tmp_path / "bad.json", content)
    with pytest.raises(EntryError) as raised:
        read_entries(path)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{path}{expected}")


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests_served = 0

    def do_GET(self):
        type(self).requests_served += 1
        super().do_GET()

    def log_message(self, format, *args):
        pass


def test_url_source_is_downloaded_once(instruction_data, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_INSTRUCT_CACHE", str(tmp_path / "cache"))
    handler = lambda *args, **kwargs: CountingHandler(  # noqa: E731
        *args, directory=str(instruction_data.parent), **kwargs
    )
    CountingHandler.requests_served = 0
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/{instruction_data.name}"
            path = data_file(url)
            assert CountingHandler.requests_served == 1
            assert path.is_relative_to(tmp_path / "cache")
            assert path.read_bytes() == instruction_data.read_bytes()
            assert data_file(url) == path
            assert CountingHandler.requests_served == 1
        finally:
            server.shutdown()
            thread.join(timeout=10)


def test_unreachable_url_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_INSTRUCT_CACHE", str(tmp_path / "cache"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused, as offline
    url = f"http://127.0.0.1:{port}/instruction-data.json"
    with pytest.raises(DownloadError) as raised:
        data_file(url)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"could not download instruction-data.json from {url} (")
    assert message.endswith("; download it on a machine with internet and pass --data PATH to the local copy")


@pytest.mark.parametrize("name, text", [
    ("entries.json", '[{"instruction": "a", "output": "b"}, {"instruction": "c", "input": "d", "output": "e"}]'),
    ("entries.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "input": "d", "output": "e"}\n'),
])
def test_a_byte_order_mark_is_accepted(tmp_path, name, text):
    """Files saved on Windows start with a UTF-8 byte order mark: still valid JSON and JSONL."""
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert [e["instruction"] for e in read_entries(path)] == ["a", "c"]


def test_a_ds_config_with_a_byte_order_mark_is_read(tmp_path):
    from trainer.training.engine import read_ds_config

    path = tmp_path / "ds.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"zero_optimization": {"stage": 3}}')
    assert read_ds_config(path) == {"zero_optimization": {"stage": 3}}
