"""journal.py: an interrupted compress or decompress resumes from its journal, codes only the
batches it lacks, and gives the bytes of an uninterrupted run; a journal of another job, a record
cut off or damaged is never reused."""

import io
import logging

import pytest

from llmzip import Compressor, batches
from llmzip.journal import MAGIC, Journal, digest, job_of

TEXT = b"".join(b"line %d: the rain and the sun\n" % i for i in range(120))


@pytest.fixture
def coder(tiny):
    """Level 1 (no side models), 32-token chunks, one chunk a batch: many batches."""
    return Compressor(tiny, level=1, chunk_size=32, batch_size=1, threads=1)


class Stop(Exception):
    pass


@pytest.fixture
def counted(monkeypatch):
    """Counts the batches BatchCoder codes; `stop_after` = n stops coding after n of them."""
    calls = {"encode": 0, "decode": 0, "stop_after": None}

    def wrap(name):
        original = getattr(batches.BatchCoder, name)

        def coded(self, *args, **kwargs):
            if calls["stop_after"] is not None and calls[name] >= calls["stop_after"]:
                raise Stop
            calls[name] += 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(batches.BatchCoder, name, coded)

    wrap("encode")
    wrap("decode")
    return calls


def test_records_survive_a_cut_off_write_and_another_jobs_journal_is_set_aside(tmp_path, caplog):
    path, job = str(tmp_path / "j"), job_of("compress", b"fingerprint", b"input")
    journal = Journal(path, job)
    journal.put(digest("a"), ([b"one", None, b""], 1.5))
    journal.put(digest("b"), ([b"two"], 2.0))
    journal.close()
    with open(path, "ab") as f:
        f.write(digest("c") + b"\x09")  # a record cut off mid-write
    with caplog.at_level(logging.INFO, logger="llmzip"):
        again = Journal(path, job)
    assert "dropping a damaged or unfinished record" in caplog.text
    assert again.get(digest("a")) == ([b"one", None, b""], 1.5) and again.get(digest("b")) == ([b"two"], 2.0)
    assert set(again.held) == {digest("a"), digest("b")}
    again.put(digest("c"), ([b"three"], 3.0))  # appended where the cut-off record was
    again.close()
    assert Journal(path, job).get(digest("c")) == ([b"three"], 3.0)
    with caplog.at_level(logging.INFO, logger="llmzip"):
        other = Journal(path, job_of("compress", b"fingerprint", b"another input"))
    assert "a journal of another input" in caplog.text and other.held == {}
    other.close()
    with open(path, "rb") as f:
        assert f.read() == MAGIC + other.job


def test_a_damaged_record_and_what_follows_are_dropped(tmp_path):
    path, job = str(tmp_path / "j"), job_of("decompress", b"f", b"archive")
    journal = Journal(path, job)
    for name in "abc":
        journal.put(digest(name), ([name.encode() * 100], 0.0))
    journal.close()
    with open(path, "r+b") as f:
        f.seek(len(MAGIC) + 32 + (40 + 16 + 8 + 100 + 4) + 40 + 50)  # inside b's body
        f.write(b"!")
    assert set(Journal(path, job).held) == {digest("a")}


def test_an_interrupted_compress_resumes_to_the_same_archive(coder, counted, tmp_path, caplog):
    whole = coder.compress(TEXT)
    total = counted["encode"]
    assert total > 4
    journal = str(tmp_path / "out.lz.llmzip-journal")
    counted.update(encode=0, stop_after=3)
    with pytest.raises(Stop):
        coder.compress_stream(io.BytesIO(TEXT), journal=journal)
    counted.update(encode=0, stop_after=None)
    with caplog.at_level(logging.INFO, logger="llmzip"):
        archive = coder.compress_stream(io.BytesIO(TEXT), journal=journal)
    assert f"3 of {total} batches already coded" in caplog.text
    assert b"".join(archive.blocks()) == whole and counted["encode"] == total - 3


def test_an_interrupted_decompress_resumes_and_checks_what_it_reuses(coder, counted, tmp_path):
    archive = coder.compress(TEXT)
    journal = str(tmp_path / "out.llmzip-journal")
    counted.update(stop_after=2)
    with pytest.raises(Stop):
        b"".join(coder.iter_decompress(archive, journal=journal))
    counted.update(decode=0, stop_after=None)
    assert b"".join(coder.iter_decompress(archive, journal=journal)) == TEXT
    assert counted["decode"] == coder.stats.chunks - 2  # one chunk a batch
    counted.update(decode=0)
    assert b"".join(coder.iter_decompress(archive, journal=journal)) == TEXT and counted["decode"] == 0
    with open(journal, "r+b") as f:  # the last batch's record damaged: dropped, decoded again
        f.seek(-10, 2)
        f.write(b"\0" * 10)
    assert b"".join(coder.iter_decompress(archive, journal=journal)) == TEXT and counted["decode"] == 1


def test_a_journal_never_feeds_another_input_or_level(coder, tiny, counted, tmp_path):
    journal = str(tmp_path / "out.lz.llmzip-journal")
    counted.update(stop_after=3)
    with pytest.raises(Stop):
        coder.compress_stream(io.BytesIO(TEXT), journal=journal)
    counted.update(encode=0, stop_after=None)
    other = TEXT.replace(b"sun", b"sky")
    archive = coder.compress_stream(io.BytesIO(other), journal=journal)
    assert b"".join(archive.blocks()) == coder.compress(other)
    counted.update(encode=0)
    level2 = Compressor(tiny, level=2, chunk_size=32, batch_size=1, threads=1)  # the same job, another plan
    archive = level2.compress_stream(io.BytesIO(other), journal=journal)
    assert b"".join(archive.blocks()) == level2.compress(other)
