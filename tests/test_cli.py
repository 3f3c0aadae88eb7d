"""The command line, through click's runner and through a real subprocess."""

import errno
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from llmzip import Compressor, container, versions
from llmzip.cli import main
from llmzip.levels import BEST, DEFAULT_LEVEL, FASTEST, LEVELS

TEXT = "the rain and the sun\r\n\u041f\u0440\u0438\u0432\u0435\u0442 \U0001f600\n".encode() * 20 + b"\xff\x04"


@pytest.fixture
def run(tiny_dir):
    """Invoke the CLI in-process; the tiny model is passed to compress."""

    def invoke(*args: str, input: bytes | None = None):
        args = list(args)
        if args[0] == "compress" and "--model" not in args:
            args += ["--model", tiny_dir]
        return CliRunner().invoke(main, args, input=input, catch_exceptions=False)

    return invoke


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample.txt"
    path.write_bytes(TEXT)
    return path


def one_line_error(result, exit_code: int = 1) -> str:
    assert result.exit_code == exit_code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmzip: error: "), result.stderr
    return lines[0]


def test_compress_decompress_default_names(run, sample):
    assert run("compress", str(sample), "-q", "--chunk-size", "32", "--batch-size", "4").exit_code == 0
    archive = sample.with_name("sample.txt.lz")
    assert archive.exists() and sample.read_bytes() == TEXT  # input untouched
    os.rename(sample, sample.with_name("original.txt"))
    assert run("decompress", str(archive), "-q").exit_code == 0
    assert sample.read_bytes() == TEXT


def test_dash_d_is_decompress(run, sample, tmp_path):
    run("compress", str(sample), "-q")
    out = tmp_path / "out"
    assert run("-d", str(sample) + ".lz", "-o", str(out), "-q").exit_code == 0
    assert out.read_bytes() == TEXT


def test_refuses_to_overwrite_without_force(run, sample):
    target = sample.with_name("sample.txt.lz")
    target.write_bytes(b"precious")
    assert "already exists; use -f" in one_line_error(run("compress", str(sample), "-q"))
    assert target.read_bytes() == b"precious"
    assert run("compress", str(sample), "-q", "-f").exit_code == 0
    assert target.read_bytes().startswith(b"LLMZ")


def test_rm_removes_input_only_after_success(run, sample):
    assert run("compress", str(sample), "-q", "--rm").exit_code == 0
    assert not sample.exists()
    assert run("decompress", str(sample) + ".lz", "-q", "--rm").exit_code == 0
    assert sample.read_bytes() == TEXT and not sample.with_name("sample.txt.lz").exists()


def test_stdin_to_stdout(run):
    archive = run("compress", "-", "-q", input=TEXT).stdout_bytes
    assert archive.startswith(b"LLMZ")
    assert run("decompress", "-", "-q", input=archive).stdout_bytes == TEXT


@pytest.mark.slow
def test_real_processes_through_pipes(tiny_dir, sample):
    """`python -m llmzip` through OS pipes (unknown size, cannot seek): the archive is verified at
    the pipe's end, a damaged one fails there with exit code 1, and errors are one line."""
    llmzip = [sys.executable, "-m", "llmzip"]
    compressed = subprocess.run([*llmzip, "compress", "-", "-c", "--model", tiny_dir, "--chunk-size", "16"],
                                input=TEXT * 3, capture_output=True, check=True)  # fmt: skip
    assert compressed.stderr.startswith(f"-: {len(TEXT) * 3} -> ".encode())  # counts what the pipe gave
    restored = subprocess.run([*llmzip, "decompress", "-", "-c"], input=compressed.stdout, capture_output=True)
    assert restored.returncode == 0 and restored.stdout == TEXT * 3
    damaged = compressed.stdout[:-1] + bytes([compressed.stdout[-1] ^ 1])
    failed = subprocess.run([*llmzip, "decompress", "-", "-c"], input=damaged, capture_output=True)
    assert failed.returncode == 1 and failed.stderr.decode().strip().splitlines()[-1].startswith("llmzip: error:")
    refused = subprocess.run([*llmzip, "decompress", str(sample)], capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr


@pytest.mark.parametrize(("precision", "level"), [("exact", "-1"), ("exact", "-6"), ("fp32", "-6")])
def test_geometry_flags_and_decoding(run, sample, tmp_path, precision, level):
    """Compressed with 8 chunks a batch on 2 threads, decompressed asking for 1 chunk and 1 thread:
    an exact archive decodes as asked (with side models, -2 and up, in its encoder's batches),
    a machine-bound (fp32) one in its own geometry."""
    args = ("compress", str(sample), "--chunk-size", "16", "--batch-size", "8", "--threads", "2", level)
    compressed = run(*args, "--precision", precision)
    assert compressed.exit_code == 0
    assert ("warning: model" in compressed.stderr) == (precision != "exact")
    out = tmp_path / "out"
    result = run("decompress", str(sample) + ".lz", "-o", str(out), "--batch-size", "1", "--threads", "1", "-v")
    assert result.exit_code == 0, result.output
    header, _ = container.unpack((tmp_path / "sample.txt.lz").read_bytes())
    assert 1 < header.batch_size <= 8 and header.threads == 2 and header.precision == precision
    if precision == "exact":
        batch = header.batch_size if header.side_models else 1
        assert header.side_models == (level != "-1")
        assert f"exact archive: batch {batch}, 1 threads, device cpu" in result.stderr
    else:
        assert f"machine-bound archive: batch {header.batch_size}, {header.rows} rows, 2 threads, fp32" in result.stderr
    assert out.read_bytes() == TEXT


def test_info_and_test(run, sample):
    run("compress", str(sample), "-q")
    info = run("info", str(sample) + ".lz")
    assert info.exit_code == 0
    for field in ("original size", f"{len(TEXT)} bytes", "bits/byte", "header", "model", "chunks", "exact: opens"):
        assert field in info.stdout
    tested = run("test", str(sample) + ".lz")
    assert tested.exit_code == 0 and "OK" in tested.stderr


def test_commands_that_do_not_code_do_not_import_torch(run, sample, tmp_path):
    """--help, models, info and an error in the input answer without importing torch or
    transformers (about 7 s before anything happens)."""
    out = tmp_path / "steered.lz"
    steered = run("compress", str(sample), "-o", str(out), "-q", "--steer", "trained:1", "--steer-steps", "1")
    assert steered.exit_code == 0
    code = """
import sys
from llmzip.cli import main
for args in (["--help"], ["models"], ["info", sys.argv[1]], ["decompress", sys.argv[1] + ".missing"]):
    try:
        main(args)
    except SystemExit as e:
        assert e.code == (1 if args[0] == "decompress" else 0), (args, e.code)
print(sorted({"torch", "transformers"} & set(sys.modules)))
"""
    done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True)
    assert "trained:1" in done.stdout and "no such file" in done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_steering_options_and_info(run, sample, tmp_path):
    out = tmp_path / "steered.lz"
    args = [
        "--steer",
        "trained:1",
        "--prior",
        "lloyd-max",
        "--prior-bins",
        "16",
        "--prior-clip",
        "2",
        "--steer-steps",
        "3",
    ]
    assert run("compress", str(sample), "-o", str(out), "-q", *args).exit_code == 0
    info = run("info", str(out)).stdout
    assert "trained:1" in info and "prior lloyd-max" in info and "bits/coordinate" in info
    assert "net gain not measured" in info
    assert (
        run("compress", str(sample), "-o", str(out), "-f", "-q", "--steer", "auto", "--steer-steps", "3").exit_code == 0
    )
    steering = next(line for line in run("info", str(out)).stdout.splitlines() if "steering:" in line)
    assert "none, 0 header bits" in steering or "vs none" in steering  # auto keeps whichever is smaller
    assert run("decompress", str(out), "-o", str(tmp_path / "back"), "-q").exit_code == 0
    assert (tmp_path / "back").read_bytes() == TEXT


@pytest.mark.parametrize("bad", [["--steer", "trained:0"], ["--steer", "vectors"], ["--prior", "laplace"],
                                 ["--prior-bins", "1"], ["--steer-lr", "0"]])  # fmt: skip
def test_bad_steering_options(run, sample, bad):
    one_line_error(run("compress", str(sample), "-q", *bad))


@pytest.mark.parametrize(
    ("flags", "level"),
    [
        ((), DEFAULT_LEVEL), (("-1",), 1), (("--fast",), FASTEST), (("--best",), BEST), (("-9", "-3"), 3),
        (("--best", "--no-learn"), BEST), (("-3", "--learn"), 3),
    ],
)  # fmt: skip
def test_levels_and_info(run, sample, tiny, flags, level):
    """-N, --fast and --best (the last one given wins, as in zstd), the level's learning unless
    --learn/--no-learn say; info shows the level."""
    assert run("compress", str(sample), "-f", "-q", *flags).exit_code == 0
    info = run("info", str(sample) + ".lz").stdout
    assert f"level: {level}," in info and f"up to {Compressor(tiny, level=level).chunk_size} tokens" in info
    assert (f"side models v{versions.SIDE_MODELS}" in info) == ("side models" in info) == LEVELS[level].side
    learns = "--learn" in flags or (LEVELS[level].learn and "--no-learn" not in flags)
    assert (f"weights learning as they code v{versions.LEARNING}" in info) == learns
    assert run("decompress", str(sample) + ".lz", "-o", str(sample) + ".out", "-q").exit_code == 0


def test_models_lists_aliases(run):
    result = run("models")
    assert result.exit_code == 0
    assert result.stdout.startswith("auto (default):")
    assert "\nsmollm2-135m: " in result.stdout and "\ngemma3-270m: " in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("compress", "/nonexistent/file"), "no such file"),
        (("decompress", "/nonexistent/file.lz"), "no such file"),
        (("compress", "--chunk-size", "0", "x"), "chunk-size"),
        (("compress", "--batch-size", "-3", "x"), "batch-size"),
        (("compress", "--threads", "zero", "x"), "threads"),
        (("compress", "--precision", "fp8", "x"), "precision"),
        (("compress", "--window", "0", "x"), "window"),
        (("compress", "--workers", "0", "x"), "workers"),
        (("compress", "{sample}", "--ray", "nowhere"), "is not HOST:PORT"),
        (("compress", "{sample}", "--window", "8", "--precision", "fp32"), "needs the exact predictor"),
        (("compress", "--model", "/nonexistent/model", "{sample}"), "cannot load model"),
        (("decompress", "{sample}"), "unknown suffix"),
        (("decompress", "{sample}", "-o", "{sample}"), "overwrite the input"),
        (("test", "{sample}"), "not an llmzip archive"),
        (("info", "{dir}"), "is a directory"),
        (("compress", "{dir}"), "is a directory"),
        (("decompress", "{dir}"), "is a directory"),
        (("compress", "{sample}", "-o", "{sample}"), "overwrite the input"),
    ],
)
def test_bad_input_is_one_line_error(run, sample, args, message):
    args = [a.format(sample=sample, dir=sample.parent) for a in args]
    assert message in one_line_error(run(*args))


def test_corrupt_and_truncated_archives(run, sample, tmp_path):
    run("compress", str(sample), "-q")
    archive = (sample.parent / "sample.txt.lz").read_bytes()
    flipped = archive[:-3] + bytes([archive[-3] ^ 1]) + archive[-2:]
    for name, damaged, message in [("flip", flipped, "damaged"), ("cut", archive[:-5], "truncated")]:
        path = tmp_path / f"{name}.lz"
        path.write_bytes(damaged)
        assert message in one_line_error(run("decompress", str(path), "-q"))
        assert not (tmp_path / name).exists(), "no partial output"


def test_wrong_model_names_the_needed_one(run, sample, tiny_dir, tmp_path):
    from conftest import byte_level_tokenizer, tiny_model

    other = tiny_model(byte_level_tokenizer(), seed=3)
    other_dir = tmp_path / "other-model"
    other.model.save_pretrained(other_dir)
    other.tokenizer.tokenizer.save_pretrained(other_dir)
    run("compress", str(sample), "-q")
    result = run("decompress", str(sample) + ".lz", "-o", str(tmp_path / "x"), "--model", str(other_dir))
    message = one_line_error(result)
    assert f"archive needs model '{tiny_dir}'" in message


def test_archive_from_a_newer_format_version(run, sample, tmp_path):
    run("compress", str(sample), "-q")
    archive = (sample.parent / "sample.txt.lz").read_bytes()
    newer = tmp_path / "newer.lz"
    newer.write_bytes(archive[:4] + bytes([container.FORMAT_VERSION + 1]) + archive[5:])
    message = one_line_error(run("decompress", str(newer)))
    assert "is newer than this llmzip; upgrade llmzip" in message
    assert not (tmp_path / "newer").exists()


def test_unreadable_input(run, sample, monkeypatch):
    real_open = open

    def refuse(path, *args, **kwargs):  # chmod 000 does not stop root, who runs CI
        if str(path) == str(sample):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refuse)
    assert one_line_error(run("compress", str(sample))) == f"llmzip: error: Permission denied: {sample}"


def test_prepare_does_the_first_runs_work_now_and_says_so(run, tiny_dir):
    result = run("prepare", tiny_dir)
    assert result.exit_code == 0 and result.stderr == f"llmzip: {tiny_dir}: ready\n"
    assert run("prepare", tiny_dir, "-q").stderr == ""


def test_a_resumed_job_says_so_unless_quiet(run, sample, tmp_path):
    archive = tmp_path / "a.lz"
    options = ["-1", "--chunk-size", "16", "--batch-size", "2"]
    assert run("compress", str(sample), "-o", str(archive), "-q", *options).exit_code == 0
    journal = tmp_path / "a.lz.llmzip-journal"
    journal.write_bytes(b"not a journal")  # as a stale one: read, set aside, removed at the end
    result = run("compress", str(sample), "-o", str(archive), "-f", *options)
    assert f"llmzip: {journal}: a journal of another input, model or llmzip version; starting over" in result.stderr
    assert not journal.exists()
    journal.write_bytes(b"not a journal")
    assert run("compress", str(sample), "-o", str(archive), "-f", "-q", *options).stderr == ""


def test_model_auto_records_a_slower_models_choice_and_decodes(run, tiny_dir, tiny_gemma3_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("llmzip.model_choice.CANDIDATES", (tiny_dir, tiny_gemma3_dir))
    sample = tmp_path / "long.txt"
    sample.write_bytes(TEXT * 4)  # longer than the probe
    named = tmp_path / "named.lz"
    assert run("compress", str(sample), "-o", str(named), "-q", "-1", "--model", tiny_dir).exit_code == 0
    kept = tmp_path / "kept.lz"
    monkeypatch.setattr("llmzip.model_choice.pick", lambda bits, gain: tiny_dir)
    assert run("compress", str(sample), "-o", str(kept), "-q", "-1", "--model", "auto").exit_code == 0
    assert kept.read_bytes() == named.read_bytes()  # the fastest model kept: no record, the same archive
    slower = tmp_path / "slower.lz"
    monkeypatch.setattr("llmzip.model_choice.pick", lambda bits, gain: tiny_gemma3_dir)
    result = run("compress", str(sample), "-o", str(slower), "-1", "-v", "--model", "auto")
    assert result.exit_code == 0 and f"model {tiny_gemma3_dir}, chosen by --model auto" in result.stderr
    info = run("info", str(slower)).stdout
    assert f"model: {tiny_gemma3_dir}" in info
    assert f"model choice: chosen by --model auto: a probe of {4 * 512} bytes" in info and tiny_dir in info
    assert run("decompress", str(slower), "-o", str(tmp_path / "out"), "-q").exit_code == 0
    assert (tmp_path / "out").read_bytes() == sample.read_bytes()
    piped = run("compress", "-", "-q", "-1", "--model", "auto", input=sample.read_bytes())  # probed from a copy
    assert piped.stdout_bytes == slower.read_bytes()
