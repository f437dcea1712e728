"""trainer.gpt2.fetch against a real HTTP server on 127.0.0.1 (tests/trainer/conftest.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.gpt2.fetch import DownloadError, cache_dir, download, hub_sha256

REPO = Path(__file__).resolve().parents[2]
HINT = "pass --weights PATH to a local model.safetensors"
DATA = bytes(range(256)) * 4096  # 1 MiB, every offset distinguishable
DATA_SHA = hashlib.sha256(DATA).hexdigest()


def test_full_download(file_server, tmp_path):
    file_server.files["/f.bin"] = DATA
    dest = tmp_path / "sub" / "f.bin"
    assert download(file_server.url("/f.bin"), dest, sha256=DATA_SHA, offline_hint=HINT) == dest
    assert dest.read_bytes() == DATA
    assert not dest.with_name("f.bin.part").exists()
    assert file_server.gets("/f.bin") == [None]
    # Present and matching: returned without asking the server again.
    download(file_server.url("/f.bin"), dest, sha256=DATA_SHA, offline_hint=HINT)
    download(file_server.url("/f.bin"), dest, offline_hint=HINT)
    assert len(file_server.gets("/f.bin")) == 1


def test_resumes_a_partial_part_file(file_server, tmp_path):
    file_server.files["/f.bin"] = DATA
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(DATA[:300_000])
    download(file_server.url("/f.bin"), dest, sha256=DATA_SHA, offline_hint=HINT)
    assert dest.read_bytes() == DATA
    assert file_server.gets("/f.bin") == ["bytes=300000-"]


def test_connection_dropped_midway_then_resumed(file_server, tmp_path):
    file_server.files["/f.bin"] = DATA
    file_server.close_after = 400_000
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match=r"closed after 400000 of 1048576 bytes") as failure:
        download(file_server.url("/f.bin"), dest, sha256=DATA_SHA, offline_hint=HINT)
    assert "\n" not in str(failure.value)
    assert not dest.exists()
    assert dest.with_name("f.bin.part").stat().st_size == 400_000

    file_server.close_after = None
    download(file_server.url("/f.bin"), dest, sha256=DATA_SHA, offline_hint=HINT)
    assert dest.read_bytes() == DATA
    assert file_server.gets("/f.bin") == [None, "bytes=400000-"]


def test_complete_part_file_is_not_fetched_again(file_server, tmp_path):
    """A crash between the last byte and the rename: the server answers 416 to the range."""
    file_server.files["/f.bin"] = DATA
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(DATA)
    download(file_server.url("/f.bin"), dest, sha256=DATA_SHA, offline_hint=HINT)
    assert dest.read_bytes() == DATA
    assert file_server.gets("/f.bin") == [f"bytes={len(DATA)}-"]


def test_checksum_mismatch_deletes_and_raises(file_server, tmp_path):
    file_server.files["/f.bin"] = DATA
    dest = tmp_path / "f.bin"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as failure:
        download(file_server.url("/f.bin"), dest, sha256=wrong, offline_hint=HINT)
    message = str(failure.value)
    assert "\n" not in message
    assert f"has sha256 {DATA_SHA}, expected {wrong}" in message
    assert file_server.url("/f.bin") in message and HINT in message
    assert not dest.exists() and not dest.with_name("f.bin.part").exists()


def test_damaged_copy_in_place_is_fetched_again(file_server, tmp_path):
    file_server.files["/f.bin"] = DATA
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"not the file")
    download(file_server.url("/f.bin"), dest, sha256=DATA_SHA, offline_hint=HINT)
    assert dest.read_bytes() == DATA


def test_unreachable_url_fails_fast_with_one_line(closed_port_url, tmp_path):
    url = f"{closed_port_url}/model.safetensors"
    start = time.monotonic()
    with pytest.raises(DownloadError) as failure:
        download(url, tmp_path / "model.safetensors", offline_hint=HINT)
    assert time.monotonic() - start < 5
    message = str(failure.value)
    assert "\n" not in message
    assert message.startswith(f"could not download model.safetensors from {url} (")
    assert message.endswith(f"; {HINT}")
    assert isinstance(failure.value, ValueError)
    assert not (tmp_path / "model.safetensors").exists()


def test_http_error_is_a_download_error(file_server, tmp_path):
    with pytest.raises(DownloadError, match=r"from http://127\.0\.0\.1:\d+/missing \(HTTP 404 Not Found\)"):
        download(file_server.url("/missing"), tmp_path / "x", offline_hint=HINT)


def test_concurrent_processes_share_one_download(file_server, tmp_path):
    """Two ranks of a node ask for the same file: one fetches it, the other waits and reuses it."""
    file_server.files["/f.bin"] = DATA
    file_server.seconds_per_chunk = 0.05  # 16 chunks: the download takes about 0.8 s
    dest = tmp_path / "f.bin"
    script = (
        "import sys; from trainer.gpt2.fetch import download; "
        "print(download(sys.argv[1], sys.argv[2], sha256=sys.argv[3], offline_hint='x'))"
    )
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", script, file_server.url("/f.bin"), str(dest), DATA_SHA],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [rank.communicate(timeout=60)[0].strip() for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0]
    assert outputs == [str(dest), str(dest)]
    assert dest.read_bytes() == DATA
    assert file_server.gets("/f.bin") == [None]


def test_hub_sha256_reads_the_redirect_header(file_server, closed_port_url):
    path = "/org/repo/resolve/main/model.safetensors"
    file_server.redirects[path] = ("/cdn/blob", {"X-Linked-Etag": f'"{DATA_SHA}"'})
    assert hub_sha256(file_server.url(path), offline_hint=HINT) == DATA_SHA
    assert [m for m, p, _ in file_server.requests] == ["HEAD"]  # the redirect is not followed

    file_server.redirects[path] = ("/cdn/blob", {})
    with pytest.raises(DownloadError, match="announces no sha256"):
        hub_sha256(file_server.url(path), offline_hint=HINT)
    with pytest.raises(DownloadError, match=r"^could not download .*; pass --weights PATH"):
        hub_sha256(f"{closed_port_url}{path}", offline_hint=HINT)


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GPT2_INSTRUCT_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("GPT2_INSTRUCT_CACHE")
    assert cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "gpt2-instruct"
