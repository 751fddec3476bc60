"""The file-hash cache (`prompts.fingerprint.file_sha256`) is append-only: several processes add to it at once,
a torn last line is skipped, a reader reads only what was added since it last looked, and the base model's
A1111 hash comes from it."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os

import pytest

from prompts import fingerprint

pytestmark = pytest.mark.unit


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fingerprint._MEMO.clear()
    yield tmp_path / "cache" / "cellsynth" / "hashes.jsonl"
    fingerprint._MEMO.clear()


def _writer(home: str, worker: int, n: int) -> None:
    os.environ["XDG_CACHE_HOME"] = home
    cache = fingerprint._HashCache()
    for i in range(n):
        cache.put(f"/data/w{worker}/file{i}|{i}|0", f"{worker:02d}{i:062d}")


def test_concurrent_writers_lose_nothing(cache_home):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(cache_home.parents[1]), w, 300)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    reader = fingerprint._HashCache()
    assert reader.get("/data/w3/file299|299|0") == f"03{299:062d}"
    assert len(reader.entries) == 1200
    # a writer that saw another's line half-visible starts its own on a new line: an empty line costs nothing
    lines = [line for line in cache_home.read_text().splitlines() if line]
    assert len(lines) == 1200 and all(json.loads(line)["sha256"] for line in lines)  # no two lines interleaved


def test_a_torn_last_line_is_skipped_and_the_next_line_is_whole(cache_home):
    cache_home.parent.mkdir(parents=True)
    good = json.dumps({"key": "a|1|1", "sha256": "aa"}) + "\n"
    cache_home.write_text(good + '{"key": "b|1|1", "sha2')  # a process killed mid-write
    reader = fingerprint._HashCache()
    assert reader.get("a|1|1") == "aa" and reader.get("b|1|1") is None
    fingerprint._HashCache().put("c|1|1", "cc")
    fresh = fingerprint._HashCache()
    assert fresh.get("c|1|1") == "cc" and fresh.get("a|1|1") == "aa"
    assert reader.get("c|1|1") == "cc"  # the first reader picks up the new line too


def test_a_reader_reads_only_the_new_lines(cache_home):
    cache = fingerprint._HashCache()
    for i in range(50):
        cache.put(f"k{i}|0|0", f"{i}")
    reader = fingerprint._HashCache()
    assert reader.get("k0|0|0") == "0"
    offset = reader.offset
    assert offset == cache_home.stat().st_size
    cache.put("new|0|0", "n")
    assert reader.get("new|0|0") == "n"
    assert reader.offset == cache_home.stat().st_size and reader.offset - offset == len(
        json.dumps({"key": "new|0|0", "sha256": "n"}) + "\n")


def test_large_files_and_the_model_hash_come_from_the_cache(cache_home, tmp_path):
    from diffusion.model import model_hash

    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(os.urandom(2 << 20))
    truth = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert model_hash(model) == truth[:10]
    (line,) = cache_home.read_text().splitlines()
    rec = json.loads(line)
    st = weights.stat()
    assert rec == {"key": f"{os.path.realpath(weights)}|{st.st_size}|{st.st_mtime_ns}", "sha256": truth}
    # another process (a fresh memory) trusts the record: a planted value is what it reads
    planted = "f" * 64
    cache_home.write_text(json.dumps({"key": rec["key"], "sha256": planted}) + "\n")
    fingerprint._MEMO.clear()
    fingerprint._DISK.__init__()
    assert model_hash(model) == planted[:10]
    # a changed file (new mtime) is hashed again
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert model_hash(model) == truth[:10]
