"""Saving and loading indexes and stores: round trips, bad files, corruption, crashes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import bsc_native
from bsc_native import (
    BinaryIndex,
    BscError,
    CacheFileError,
    CacheStore,
    CorruptFileError,
    EmptyFileError,
    EncoderMismatchError,
    NotACacheFileError,
    TruncatedFileError,
    UnsupportedVersionError,
)

HEADER = 128
ENTRY = 32


def random_codes(n: int, words: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**63, size=(n, words), dtype=np.uint64)


def make_store(n: int = 200, seed: int = 0, max_entries: int = 1000) -> CacheStore:
    store = CacheStore(code_bits=256, max_entries=max_entries, fingerprint="enc-A")
    codes = random_codes(n, seed=seed)
    ids = [store.put(c, f"response {seed}-{i} ".encode() * (i % 7)) for i, c in enumerate(codes)]
    for i in range(0, n, 3):  # hits reorder the LRU list and count accesses
        store.lookup(codes[i], max_distance=0)
    for entry_id in ids[::11]:
        store.delete(entry_id)
    store.lookup(random_codes(1, seed=99)[0], max_distance=0)  # a miss
    return store


def snapshot(store: CacheStore) -> tuple:
    """Everything a store holds that a user can observe."""
    ids = store.lru_ids().tolist()
    entries = [store.peek(i) for i in ids]
    codes = [store.get_code(i).tolist() for i in ids]
    stats = {k: v for k, v in store.stats().items() if k not in ("memory_bytes", "mapped_bytes")}
    return ids, entries, codes, stats, store.fingerprint


def sections(data: bytes) -> dict[bytes, tuple[int, int]]:
    count = int.from_bytes(data[20:24], "little")
    out = {}
    for i in range(count):
        at = HEADER + i * ENTRY
        tag = data[at : at + 4]
        offset = int.from_bytes(data[at + 8 : at + 16], "little")
        length = int.from_bytes(data[at + 16 : at + 24], "little")
        out[tag] = (offset, length)
    return out


# -- round trips ------------------------------------------------------------------------------


def test_store_round_trip_keeps_every_entry_timestamp_counter_and_the_lru_order(tmp_path: Path) -> None:
    store = make_store()
    path = tmp_path / "cache.bsc"
    store.save(path, meta=b'{"k": 1}')
    loaded = CacheStore.load(path)
    assert snapshot(loaded) == snapshot(store)
    assert loaded.meta == b'{"k": 1}' and loaded.fingerprint == "enc-A"
    assert (loaded.code_bits, loaded.max_entries) == (256, 1000)
    assert loaded.stats()["mapped_bytes"] > 0
    # The loaded store keeps working like the original: same answers, same ids, same evictions.
    for s in (store, loaded):
        s.put(random_codes(1, seed=5)[0], b"new")
        s.lookup(random_codes(1, seed=0)[0], max_distance=3)
    after = [snapshot(s) for s in (store, loaded)]
    assert [(ids, [e[2] for e in entries], codes) for ids, entries, codes, *_ in after] == [
        (ids, [e[2] for e in entries], codes) for ids, entries, codes, *_ in after[:1]
    ] * 2
    # verify=True reads every response now; the file is unchanged by the writes above.
    assert snapshot(CacheStore.load(path, verify=True))[0] == snapshot(CacheStore.load(path))[0]


def test_lookups_and_puts_during_saves_every_save_loads(tmp_path: Path) -> None:
    store = CacheStore(code_bits=256, max_entries=5000)
    codes = random_codes(2000, seed=11)
    for i, c in enumerate(codes):
        store.put(c, b"r%d" % i, key=i + 1)
    path = tmp_path / "cache.bsc"
    stop = threading.Event()
    served = [0, 0]

    def lookups(n: int) -> None:
        i = n
        while not stop.is_set():
            served[n] += store.lookup_key(i % 2000 + 1) is not None
            i += 7

    def puts() -> None:
        extra = random_codes(400, seed=12)
        for c in extra:
            if stop.is_set():
                break
            store.put(c, b"p")

    threads = [threading.Thread(target=lookups, args=(n,)) for n in range(2)] + [threading.Thread(target=puts)]
    for t in threads:
        t.start()
    try:
        for _ in range(5):
            store.save(path)
            loaded = CacheStore.load(path, verify=True)
            assert len(loaded.lru_ids()) == len(loaded) >= 2000
    finally:
        stop.set()
        for t in threads:
            t.join()
    stats = store.stats()
    assert stats["hits"] == sum(served)
    # Every hit's use was applied or counted as dropped; none is dropped at this size.
    assert stats["lru_touches_dropped"] == 0
    assert CacheStore.load(path).stats()["lru_touches_dropped"] == 0


def test_load_with_a_smaller_max_entries_evicts_the_least_recently_used(tmp_path: Path) -> None:
    store = make_store()
    path = tmp_path / "c.bsc"
    store.save(path)
    order = store.lru_ids().tolist()
    loaded = CacheStore.load(path, max_entries=10)
    assert loaded.lru_ids().tolist() == order[:10]
    assert loaded.stats()["evictions"] == store.stats()["evictions"] + len(order) - 10


def test_index_round_trip_searches_the_mapped_file(tmp_path: Path) -> None:
    index = BinaryIndex(256, fingerprint="enc-A")
    codes = random_codes(5000)
    ids = index.add(codes)
    index.remove(int(ids[7]))
    index.clear()
    ids = index.add(codes)  # slots reused; ids from before clear() stay dead
    path = tmp_path / "i.bsc"
    index.save(path, meta=b"m")
    loaded = BinaryIndex.load(path, fingerprint="enc-A")
    assert loaded.meta == b"m" and loaded.mapped_bytes() >= 5000 * 32
    assert loaded.ids().tolist() == index.ids().tolist()
    queries = random_codes(20, seed=3)
    for q in queries:
        assert [a.tolist() for a in loaded.search(q, k=5)] == [a.tolist() for a in index.search(q, k=5)]
    new = random_codes(3, seed=4)
    assert loaded.add(new).tolist() == index.add(new).tolist()


def test_empty_store_and_index_round_trip(tmp_path: Path) -> None:
    CacheStore(code_bits=64, max_entries=3).save(tmp_path / "s")
    assert len(CacheStore.load(tmp_path / "s")) == 0
    BinaryIndex(64).save(tmp_path / "i")
    assert len(BinaryIndex.load(tmp_path / "i")) == 0


def test_save_replaces_the_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "c.bsc"
    make_store(seed=1).save(path)
    make_store(seed=2).save(path)
    assert sorted(os.listdir(tmp_path)) == ["c.bsc"]
    assert CacheStore.load(path).peek(CacheStore.load(path).lru_ids()[0])[2].startswith(b"response 2-")


# -- bad files --------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "good.bsc"
    make_store().save(path)
    return path, path.read_bytes()


def load_bytes(path: Path, data: bytes, **kwargs: object) -> CacheStore:
    path.write_bytes(data)
    return CacheStore.load(path, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda d: b"", EmptyFileError),
        (lambda d: b"PK\x03\x04 a zip, not a cache", NotACacheFileError),
        (lambda d: b"\x80\x04\x95pickle", NotACacheFileError),
        (lambda d: d[:3], TruncatedFileError),
        (lambda d: d[:60], TruncatedFileError),
        (lambda d: d[: len(d) // 2], TruncatedFileError),
        (lambda d: d[:-1], TruncatedFileError),
        (lambda d: d[:8] + (7).to_bytes(4, "little") + d[12:], UnsupportedVersionError),
        (lambda d: d + b"\0" * 8, CorruptFileError),
        (lambda d: d[:30] + bytes([d[30] ^ 4]) + d[31:], CorruptFileError),
    ],
    ids=[
        "zero-length",
        "zip",
        "pickle",
        "magic-only",
        "header-cut",
        "half",
        "last-byte",
        "future",
        "appended",
        "header-flip",
    ],
)
def test_bad_files_raise_a_specific_error_naming_the_file(saved, make, error) -> None:  # type: ignore[no-untyped-def]
    path, good = saved
    with pytest.raises(error) as raised:
        load_bytes(path, make(good))
    assert str(path) in str(raised.value)
    assert isinstance(raised.value, CacheFileError) and isinstance(raised.value, BscError)


def test_a_flipped_bit_in_any_section_is_caught(saved) -> None:  # type: ignore[no-untyped-def]
    path, good = saved
    for tag, (offset, length) in sections(good).items():
        if length == 0:
            continue
        bad = bytearray(good)
        bad[offset + length // 2] ^= 0x10
        if tag == b"RESP":
            # Responses are checked on first read, block by block (or all at load with verify).
            store = load_bytes(path, bytes(bad))
            with pytest.raises(CorruptFileError, match="responses block"):  # noqa: PT012 (some peek raises)
                for entry_id in store.lru_ids():
                    store.peek(int(entry_id))
            with pytest.raises(CorruptFileError, match="responses block"):
                load_bytes(path, bytes(bad), verify=True)
        else:
            with pytest.raises(CorruptFileError, match=tag.decode()):
                load_bytes(path, bytes(bad))
    # A flip in the padding between sections is caught too.
    offset = sections(good)[b"FPRT"][0] + len(b"enc-A")
    bad = bytearray(good)
    bad[offset] ^= 1
    with pytest.raises(CorruptFileError, match="between sections"):
        load_bytes(path, bytes(bad))


def test_a_corrupt_response_is_reported_on_the_hit_that_reads_it(saved) -> None:  # type: ignore[no-untyped-def]
    path, good = saved
    offset, _ = sections(good)[b"RESP"]
    bad = bytearray(good)
    bad[offset + 9] ^= 0xFF
    store = load_bytes(path, bytes(bad))
    again = path.with_name("again.bsc")
    with pytest.raises(CorruptFileError):
        store.save(again)  # corruption is never laundered into a new file with fresh checksums
    assert not again.exists()
    total = len(store)
    failed, messages = [], []
    for entry_id in store.lru_ids().tolist():
        try:
            store.peek(entry_id)
        except CorruptFileError as err:
            messages.append(str(err))
            failed.append(entry_id)
            with pytest.raises(CorruptFileError, match="removed"):  # a hit raises, and removes it
                store.lookup(store.get_code(entry_id), max_distance=0)
            assert entry_id not in store
    assert all(str(path) in message for message in messages)
    # Only the entries whose 64 KiB block holds the flipped byte fail; the others answer.
    assert 0 < len(failed) < total and len(store) == total - len(failed)
    store.save(again)  # with the damaged entries gone, the cache saves cleanly
    assert len(CacheStore.load(again, verify=True)) == total - len(failed)


def test_wrong_kind_and_wrong_encoder(tmp_path: Path, saved) -> None:  # type: ignore[no-untyped-def]
    path, _ = saved
    with pytest.raises(NotACacheFileError, match="cache"):
        BinaryIndex.load(path)
    with pytest.raises(EncoderMismatchError, match="enc-A") as raised:
        CacheStore.load(path, fingerprint="enc-B")
    assert str(path) in str(raised.value)
    with pytest.raises(FileNotFoundError):
        CacheStore.load(tmp_path / "missing.bsc")
    with pytest.raises(IsADirectoryError):
        CacheStore.load(tmp_path)


def test_seeded_random_corruption_never_crashes_the_loader(saved) -> None:  # type: ignore[no-untyped-def]
    """Bit flips, byte overwrites, truncations, lying length fields, appended junk: every file
    loads with a CacheFileError or loads into a store whose every call works or raises
    CorruptFileError. (The Rust suite runs 3,000 more; docs/FORMAT.md says how to fuzz.)"""
    path, good = saved
    rng = random.Random(20261126)
    table_end = HEADER + len(sections(good)) * ENTRY
    outcomes = {"refused": 0, "loaded": 0}
    for _ in range(int(os.environ.get("BSC_CORRUPTION_CASES", "400"))):
        data = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            kind = rng.randrange(5)
            at = rng.randrange(len(data)) if data else 0
            if kind == 0 and data:
                data[at] ^= 1 << rng.randrange(8)
            elif kind == 1 and data:
                data[at] = rng.randrange(256)
            elif kind == 2:
                del data[at:]
            elif kind == 3 and len(data) >= table_end:
                field = rng.randrange(24, table_end - 8) & ~7
                value = rng.choice([0, 1, 2**64 - 1, 2**32 - 1, rng.randrange(2**64), rng.randrange(10**6)])
                data[field : field + 8] = value.to_bytes(8, "little")
            else:
                data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        try:
            store = load_bytes(path, bytes(data))
        except CacheFileError:
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1
        for entry_id in store.lru_ids():
            try:
                store.peek(int(entry_id))
                store.lookup(store.get_code(int(entry_id)), max_distance=0)
            except CorruptFileError:
                pass
        store.put(random_codes(1, seed=7)[0], b"still works")
    assert outcomes["refused"] > 0


# -- crash safety -----------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from bsc_native import CacheStore

    def build(seed):
        store = CacheStore(code_bits=256, max_entries=100_000)
        codes = np.random.default_rng(seed).integers(0, 2**63, size=(40_000, 4), dtype=np.uint64)
        for i, c in enumerate(codes):
            store.put(c, b"%d-%d " % (seed, i) * 20)
        return store

    stores = [build(1), build(2)]
    print("ready", flush=True)
    i = 0
    while True:
        stores[i % 2].save(sys.argv[1])
        i += 1
    """
)


def test_a_save_killed_at_any_moment_leaves_the_old_file_or_the_new_one(tmp_path: Path) -> None:
    """A child process saves two different stores to one path in turn, and is killed with
    SIGKILL at a random moment; the file must load, equal to one of the two, every time."""
    if not hasattr(signal, "SIGKILL"):
        pytest.skip("needs POSIX signals")
    path = tmp_path / "c.bsc"
    rng = random.Random(7)
    points = int(os.environ.get("BSC_CRASH_POINTS", "25"))
    seen: set[bytes] = set()
    for point in range(points):
        with subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE) as child:
            assert child.stdout is not None
            assert child.stdout.readline() == b"ready\n"
            if point == 0:
                time.sleep(0.5)  # let the first save complete, so a file exists from then on
            time.sleep(rng.uniform(0.0, 0.25))
            child.send_signal(signal.SIGKILL)
            child.wait()
        if not path.exists():
            continue
        store = CacheStore.load(path, verify=True)
        assert len(store) == 40_000
        first = store.peek(int(store.lru_ids()[-1]))
        assert first is not None
        seen.add(first[2][:2])
        assert first[2][:2] in (b"1-", b"2-")
    assert path.exists() and seen
    # Killed saves leave their temporary files behind, and nothing else. Some did: the kills
    # landed in the middle of saves, not only between them.
    leftovers = [name for name in os.listdir(tmp_path) if name != "c.bsc"]
    assert all(name.startswith(".c.bsc.") and name.endswith(".tmp") for name in leftovers)
    assert len(leftovers) >= min(3, points // 5), leftovers


def test_format_version_is_exposed() -> None:
    assert bsc_native.FORMAT_VERSION == 2


def test_version_1_files_load_and_are_saved_as_version_2(tmp_path: Path) -> None:
    # Written by bsc-native before issue 21 (see src/format/tests.rs for what it holds).
    old = Path(__file__).parent / "data" / "cache-v1.bsc"
    store = CacheStore.load(old, verify=True)
    assert len(store) == 19
    entry = store.peek(3)
    assert entry is not None
    assert (entry[2], entry[3], entry[4], entry[5]) == (b"answer 3", 1_700_000_003.0, 1_700_000_102.0, 300)
    assert list(store.lru_ids()[:3]) == [0, 7, 3]
    path = tmp_path / "again.bsc"
    store.save(path)
    assert path.read_bytes()[8:12] == (2).to_bytes(4, "little")
    again = CacheStore.load(path)
    assert [again.peek(int(i)) for i in again.lru_ids()] == [store.peek(int(i)) for i in store.lru_ids()]
