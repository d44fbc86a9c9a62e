"""Data pipeline: sources, the memory-mapped bit cache, the split, windows and the DataLoader."""

from __future__ import annotations

import json
import pickle
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bit_transformer import data
from bit_transformer.bits import bits_to_bytes, bytes_to_bits
from bit_transformer.config import FRAME_BITS, DataConfig, TrainConfig
from bit_transformer.data import BitWindowDataset, Corpus, builtin_text, load_corpus
from bit_transformer.sampler import EpochBatchSampler, UpdateBatches

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare" / "input.txt"
if not SHAKESPEARE.exists():
    SHAKESPEARE = Path("/work/shared/data/tinyshakespeare/input.txt")


def _decode(bits: np.ndarray) -> bytes:
    return bits_to_bytes(np.asarray(bits))[0]


@pytest.fixture
def spy_encoder(monkeypatch):
    """Counts calls to the encoder that load_corpus uses."""
    calls: list[int] = []

    def spy(raw):
        calls.append(len(raw))
        return bytes_to_bits(raw)

    monkeypatch.setattr(data, "bytes_to_bits", spy)
    return calls


def _files_cfg(path: Path, **kw) -> DataConfig:
    return DataConfig(source="files", paths=[str(path)], **kw)


# ---------------------------------------------------------------- built-in corpus


def test_builtin_text_is_real_deterministic_and_big_enough():
    full = builtin_text()
    assert full == builtin_text()
    size = len(full.encode("utf-8"))
    assert size > 2_000_000  # docs topics (~0.47 MB) + top-level stdlib sources (~4.7 MB on 3.11)
    # Real Python docs and sources, not generated text.
    assert 'The "if" statement is used for conditional execution' in full
    assert "# argparse.py\n" in full and "class ArgumentParser(" in full
    assert full.index('The "if" statement') < full.index("# argparse.py")  # docs first, then code


@pytest.mark.parametrize("limit", [64, 1000, 123_457])
def test_builtin_text_max_bytes_is_a_prefix(limit):
    text = builtin_text(limit)
    raw = text.encode("utf-8")
    assert limit - 3 <= len(raw) <= limit  # at most a cut multi-byte character is dropped
    assert builtin_text(limit + 5000).encode("utf-8").startswith(raw)


# ---------------------------------------------------------------- cache


def test_load_builtin_caches_and_second_load_does_not_encode(tmp_path, spy_encoder):
    cfg = DataConfig(max_bytes=200_000, val_fraction=0.1)
    first = load_corpus(cfg, tmp_path)
    assert not first.cache_hit and first.cache_note is None
    assert spy_encoder == [200_000]
    assert first.source_id.startswith("builtin:python")
    assert first.n_bytes == 200_000 and len(first.content_hash) == 64
    assert isinstance(first.train, np.memmap) and isinstance(first.val, np.memmap)
    assert not first.train.flags.writeable
    assert len(first.train) % FRAME_BITS == 0 and len(first.val) % FRAME_BITS == 0
    assert _decode(first.train) + _decode(first.val) == builtin_text(200_000).encode("utf-8")

    spy_encoder.clear()
    second = load_corpus(cfg, tmp_path)
    assert second.cache_hit and spy_encoder == []
    assert second.cache_path == first.cache_path and second.content_hash == first.content_hash
    assert np.array_equal(second.train, first.train) and np.array_equal(second.val, first.val)
    meta_path = first.cache_path.with_name(first.cache_path.name[: -len(".bits.npy")] + ".json")
    meta = json.loads(meta_path.read_text())
    assert meta["n_bits"] == 200_000 * FRAME_BITS and meta["content_hash"] == first.content_hash
    assert sorted(tmp_path.iterdir()) == sorted([first.cache_path, meta_path])  # no temp files left


def test_split_is_the_tail_at_a_byte_boundary_and_reuses_the_cache(tmp_path, spy_encoder):
    text = bytes(range(32, 127)) * 100  # 9500 bytes
    path = tmp_path / "t.txt"
    path.write_bytes(text)
    cache = tmp_path / "cache"
    a = load_corpus(_files_cfg(path, val_fraction=0.1), cache)
    assert a.n_train_bytes == int(9500 * 0.9) == 8550 and a.n_val_bytes == 950
    assert _decode(a.train) == text[:8550] and _decode(a.val) == text[8550:]
    # val_fraction is applied on load: another split of the same text is still a cache hit.
    b = load_corpus(_files_cfg(path, val_fraction=0.25), cache)
    assert b.cache_hit and len(spy_encoder) == 1
    assert b.n_train_bytes == 7125 and _decode(b.val) == text[7125:]
    assert data.split_point(1_115_394, 0.1) == 1_003_854  # Tiny Shakespeare: 111,540 validation bytes


def test_changed_content_gets_a_new_entry(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("first version of the text\n" * 10)
    a = load_corpus(_files_cfg(path), tmp_path / "c")
    path.write_text("second version, edited!!\n" * 10)
    b = load_corpus(_files_cfg(path), tmp_path / "c")
    assert not b.cache_hit and b.content_hash != a.content_hash and b.cache_path != a.cache_path
    assert _decode(np.concatenate([b.train, b.val])) == path.read_bytes()


def _corrupt_truncate(c: Corpus) -> None:
    with open(c.cache_path, "r+b") as f:
        f.truncate(c.cache_path.stat().st_size - 100)


def _corrupt_flip_first(c: Corpus) -> None:
    with open(c.cache_path, "r+b") as f:
        f.seek(np.load(c.cache_path, mmap_mode="r").offset + 3)
        bit = f.read(1)[0]
        f.seek(-1, 1)
        f.write(bytes([1 - bit]))


def _corrupt_meta(c: Corpus) -> None:
    c.cache_path.with_name(c.cache_path.name[:-9] + ".json").write_text("{not json")


def _drop_meta(c: Corpus) -> None:
    c.cache_path.with_name(c.cache_path.name[:-9] + ".json").unlink()


def _garbage_header(c: Corpus) -> None:
    c.cache_path.write_bytes(b"garbage" * 10)


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (_corrupt_truncate, "corrupt"),
        (_corrupt_flip_first, "parity"),
        (_corrupt_meta, "corrupt"),
        (_drop_meta, "interrupted"),
        (_garbage_header, "corrupt"),
    ],
)
def test_corrupt_or_partial_cache_is_rebuilt(tmp_path, spy_encoder, corrupt, reason):
    path = tmp_path / "t.txt"
    path.write_text("To be, or not to be, that is the question.\n" * 50)
    cfg = _files_cfg(path)
    corrupt(load_corpus(cfg, tmp_path / "c"))
    again = load_corpus(cfg, tmp_path / "c")
    assert not again.cache_hit and reason in again.cache_note
    assert len(spy_encoder) == 2
    assert _decode(np.concatenate([again.train, again.val])) == path.read_bytes()
    assert load_corpus(cfg, tmp_path / "c").cache_hit


def test_full_verify_catches_a_flip_that_sampling_skips(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"abcdefgh" * 20_000)  # 160 kB: byte 5000 lies between sampled blocks
    cfg = _files_cfg(path)
    c = load_corpus(cfg, tmp_path / "c")
    with open(c.cache_path, "r+b") as f:  # swap two data bits of byte 5000: parity still holds
        f.seek(np.load(c.cache_path, mmap_mode="r").offset + 5000 * FRAME_BITS)
        frame = bytearray(f.read(FRAME_BITS))
        i, j = frame.index(0), frame.index(1)
        frame[i], frame[j] = 1, 0
        f.seek(-FRAME_BITS, 1)
        f.write(bytes(frame))
    assert load_corpus(cfg, tmp_path / "c").cache_hit  # sampled check misses it (documented)
    full = load_corpus(cfg, tmp_path / "c", verify="full")
    assert not full.cache_hit and "differ" in full.cache_note
    assert _decode(full.train)[5000:5008] == b"abcdefgh"


def test_failed_write_leaves_no_entry_and_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "t.txt"
    path.write_text("hello there\n" * 100)
    cache = tmp_path / "c"

    def boom(raw):
        raise RuntimeError("disk full")

    monkeypatch.setattr(data, "bytes_to_bits", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        load_corpus(_files_cfg(path), cache)
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(data, "bytes_to_bits", bytes_to_bits)
    assert not load_corpus(_files_cfg(path), cache).cache_hit


# ---------------------------------------------------------------- sources


def test_files_globs_sorted_joined_and_truncated(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee")  # no trailing newline: one is added between files
    (tmp_path / "a.txt").write_text("ay\n")
    (tmp_path / "sub" / "c.txt").write_text("sea\n")
    (tmp_path / "skip.md").write_text("not matched\n")
    cfg = DataConfig(source="files", paths=[str(tmp_path / "**" / "*.txt"), str(tmp_path / "a.txt")], val_fraction=0.2)
    c = load_corpus(cfg, tmp_path / "cache")
    assert _decode(np.concatenate([c.train, c.val])) == b"ay\nbee\nsea\n"  # a.txt listed once
    capped = load_corpus(cfg.model_copy(update={"max_bytes": 64}), tmp_path / "cache")
    assert capped.n_bytes == 11  # max_bytes larger than the text: unchanged
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 500)
    assert load_corpus(_files_cfg(big, max_bytes=100), tmp_path / "cache").n_bytes == 100


def test_files_errors_name_the_pattern(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing-here/\*\.txt"):
        load_corpus(DataConfig(source="files", paths=[str(tmp_path / "nothing-here/*.txt")]), tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        load_corpus(DataConfig(source="files", paths=[str(tmp_path / "missing.txt")]), tmp_path)
    with pytest.raises(IsADirectoryError, match=r"\*\*/\*\.txt"):
        load_corpus(DataConfig(source="files", paths=[str(tmp_path)]), tmp_path)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_hf_source_through_load_dataset_with_local_files(hf_cache, monkeypatch):
    import datasets

    calls = []
    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: calls.append((a, kw)) or real(*a, **kw))
    lines = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 30
    (hf_cache / "a.txt").write_text(lines)
    cfg = DataConfig(source="hf", hf_name="text", hf_config=None, hf_data_files=str(hf_cache / "a.txt"))
    c = load_corpus(cfg, hf_cache / "cache")
    assert calls == [(("text", None), {"split": "train", "data_files": str(hf_cache / "a.txt")})]
    assert c.source_id.startswith("hf:text/-/train:text[") and not c.cache_hit
    assert _decode(np.concatenate([c.train, c.val])) == lines.encode()  # rows re-joined with their newlines
    assert load_corpus(cfg, hf_cache / "cache").cache_hit

    # json rows: a row that already ends in '\n' gets no second one; null rows are empty lines.
    rows = [{"body": "row one"}, {"body": "row two\n"}, {"body": None}, {"body": "é" * 40}]
    (hf_cache / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    jcfg = DataConfig(
        source="hf", hf_name="json", hf_config=None, hf_data_files=[str(hf_cache / "b.jsonl")], text_field="body"
    )
    j = load_corpus(jcfg, hf_cache / "cache")
    assert _decode(np.concatenate([j.train, j.val])).decode() == "row one\nrow two\n\n" + "é" * 40 + "\n"
    with pytest.raises(KeyError, match=r"'text'.*body"):
        load_corpus(jcfg.model_copy(update={"text_field": "text"}), hf_cache / "cache")


# ---------------------------------------------------------------- windows and loader


def test_windows_are_frame_aligned_with_shifted_targets():
    bits = bytes_to_bits(bytes(range(256)) * 4)  # 1024 bytes, 9216 bits
    ds = BitWindowDataset(bits, seq_len=100)
    assert ds.stride == 108
    assert len(ds) == (9216 - 101) // 108 + 1 == 85
    for i in (0, 1, 50, len(ds) - 1, -1):
        x, y = ds[i]
        start = ds.offset(i)
        assert start % FRAME_BITS == 0
        assert x.dtype == torch.long and x.shape == (100,) and y.shape == (100,)
        assert torch.equal(x, torch.from_numpy(bits[start : start + 100].astype(np.int64)))
        assert torch.equal(y[:-1], x[1:]) and y[-1].item() == bits[start + 100]
    assert ds.offset(len(ds) - 1) + 101 <= len(bits)
    with pytest.raises(IndexError):
        ds[len(ds)]
    exact = BitWindowDataset(bits, seq_len=576)  # stride == seq_len; the last bit is never an input
    assert len(exact) == (9216 - 577) // 576 + 1 == 15
    with pytest.raises(ValueError, match="too few"):
        BitWindowDataset(bits[:576], seq_len=576)


def test_dataset_pickles_memmap_by_location(tmp_path):
    text = (b"When in the course of human events " * 3000)[:100_000]
    (tmp_path / "t.txt").write_bytes(text)
    c = load_corpus(_files_cfg(tmp_path / "t.txt"), tmp_path / "c")
    view = c.val[FRAME_BITS * 10 :]  # a slice of a memmap: its file offset is recomputed
    ds = BitWindowDataset(view, seq_len=72)
    blob = pickle.dumps(ds)
    assert len(blob) < 2000 < view.nbytes  # location only, not 90 kB of bits
    back = pickle.loads(blob)
    assert isinstance(back.bits, np.memmap) and len(back) == len(ds)
    for i in (0, 7, len(ds) - 1):
        assert all(torch.equal(a, b) for a, b in zip(back[i], ds[i], strict=True))
    plain = BitWindowDataset(np.asarray(view).copy(), seq_len=72)  # a plain array pickles as data
    assert torch.equal(pickle.loads(pickle.dumps(plain))[3][0], ds[3][0])


def _batches(loader) -> list[torch.Tensor]:
    return [x for x, _ in loader]


def _groups(batches: UpdateBatches, n: int, epoch: int = 0, position: int = 0) -> list[torch.Tensor]:
    return [torch.cat([x for x, _ in g.batches]) for g in islice(batches.groups(epoch, position), n)]


def test_update_batches_are_seeded_cover_each_epoch_and_split_ranks():
    bits = bytes_to_bits(bytes(range(256)) * 8)
    ds = BitWindowDataset(bits, 72)
    cfg = TrainConfig(batch_size=8, accum_steps=2, seed=3)
    per_epoch = EpochBatchSampler(len(ds), 8, accum_steps=2).groups
    a = _groups(UpdateBatches(ds, cfg), 2 * per_epoch)
    b = _groups(UpdateBatches(ds, cfg), 2 * per_epoch)
    c = _groups(UpdateBatches(ds, cfg.model_copy(update={"seed": 4})), 2 * per_epoch)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    epoch0, epoch1 = torch.cat(a[:per_epoch]), torch.cat(a[per_epoch:])
    everything = sorted(map(tuple, torch.stack([ds[i][0] for i in range(len(ds))]).tolist()))
    assert sorted(map(tuple, epoch0.tolist())) == sorted(map(tuple, epoch1.tolist())) == everything
    assert not torch.equal(epoch0, epoch1)  # each epoch has its own order
    ranks = [torch.cat(_groups(UpdateBatches(ds, cfg, rank=r, world_size=2), per_epoch // 2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == -(-len(ds) // 2)  # DistributedSampler pads to an even split
    assert sorted(set(map(tuple, torch.cat(ranks).tolist()))) == sorted(set(everything))


def test_update_batches_resume_mid_epoch_and_with_a_persistent_worker(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"Now is the winter of our discontent\n" * 500)
    c = load_corpus(_files_cfg(tmp_path / "t.txt"), tmp_path / "c")
    ds = BitWindowDataset(c.train, 144)
    cfg = TrainConfig(batch_size=16, accum_steps=3, seed=1)
    serial = _groups(UpdateBatches(ds, cfg), 26)
    worker = UpdateBatches(ds, cfg.model_copy(update={"num_workers": 1}))
    assert worker.loader.persistent_workers and worker.loader.num_workers == 1
    assert all(torch.equal(x, y) for x, y in zip(_groups(worker, 26), serial, strict=True))  # across epochs
    per_epoch = worker.sampler.groups
    assert per_epoch < 26
    resumed = _groups(UpdateBatches(ds, cfg), 26 - 5, epoch=0, position=5 * 3)  # after 5 full groups
    assert all(torch.equal(x, y) for x, y in zip(resumed, serial[5:], strict=True))


def test_loader_with_a_spawned_worker_reopens_the_memmap(tmp_path):
    # spawn pickles the dataset (as forkserver does, the default from Python 3.14): only the memmap's
    # location travels, and the worker reads the same windows.
    (tmp_path / "t.txt").write_bytes(bytes(range(256)) * 40)
    c = load_corpus(_files_cfg(tmp_path / "t.txt"), tmp_path / "c")
    ds = BitWindowDataset(c.val, 90)
    got = [x for x, _ in DataLoader(ds, batch_size=32, num_workers=1, multiprocessing_context="spawn")]
    want = [x for x, _ in DataLoader(ds, batch_size=32)]
    assert len(got) == len(want) > 1
    assert all(torch.equal(x, y) for x, y in zip(got, want, strict=True))


def test_tiny_shakespeare_encodes_splits_and_caches(tmp_path, spy_encoder):
    if not SHAKESPEARE.exists():
        pytest.skip(f"Tiny Shakespeare not present at {SHAKESPEARE} (shared data is optional)")
    raw = SHAKESPEARE.read_bytes()
    bits = bytes_to_bits(raw)  # its speed is a benchmark claim (benchmarks/bench_codec.py), not a test's
    c = load_corpus(_files_cfg(SHAKESPEARE), tmp_path)
    assert c.n_bytes == 1_115_394 and c.n_train_bytes == 1_003_854 and c.n_val_bytes == 111_540
    assert np.array_equal(c.val, bits[1_003_854 * FRAME_BITS :])
    assert _decode(c.val) == raw[-111_540:]
    again = load_corpus(_files_cfg(SHAKESPEARE), tmp_path)
    assert again.cache_hit and len(spy_encoder) == 1  # the cache answered: nothing was encoded again
