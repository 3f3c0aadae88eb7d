"""The paper's tables, docs/results.md and README's headline table are what benchmarks/results/*.json give."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import report  # noqa: E402


def check(argv: list[str]) -> int:
    """report.py's exit status with these arguments."""
    try:
        report.main(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_committed_tables_match_the_results() -> None:
    assert check(["--check"]) == 0, "run: python benchmarks/report.py"


@pytest.fixture
def copy_of_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The results, generated tables, README and results page in a scratch tree the report module points at."""
    shutil.copytree(report.RESULTS, tmp_path / "results")
    shutil.copytree(report.GENERATED, tmp_path / "generated")
    shutil.copy(report.README, tmp_path / "README.md")
    shutil.copy(report.RESULTS_PAGE, tmp_path / "results.md")
    monkeypatch.setattr(report, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(report, "GENERATED", tmp_path / "generated")
    monkeypatch.setattr(report, "README", tmp_path / "README.md")
    monkeypatch.setattr(report, "RESULTS_PAGE", tmp_path / "results.md")
    monkeypatch.setattr(report, "ROOT", tmp_path)
    return tmp_path


def test_a_changed_measurement_makes_the_check_fail_until_regenerated(copy_of_tree: Path) -> None:
    path = copy_of_tree / "results" / "roundtrip.json"
    data = json.loads(path.read_text())
    data["rows"][0]["archive_bytes"] += 1
    path.write_text(json.dumps(data))
    assert check(["--check"]) == 1
    assert check(["--no-plots"]) == 0
    assert check(["--check"]) == 0
    archive = f"{data['rows'][0]['archive_bytes']:,}".replace(",", " ")
    assert f"| {archive} |" in (copy_of_tree / "results.md").read_text()
    assert f"& {archive} &" in (copy_of_tree / "generated" / "roundtrip.tex").read_text()


def test_latex_escapes_what_tex_would_read_as_commands() -> None:
    table = report.Table("t", "50% of a_b & c", ["file", "bytes"], [["x_y#1", "1 000"]], "from `cmd --x`")
    tex = table.latex()
    assert r"50\% of a\_b \& c" in tex and r"x\_y\#1 & 1 000 \\" in tex
    assert table.alignment() == ["l", "r"]


@pytest.mark.skipif(shutil.which("latexmk") is None, reason="needs latexmk and TeX Live: bash scripts/setup-paper.sh")
@pytest.mark.slow
def test_make_builds_the_paper_from_the_results(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "paper", tmp_path / "paper", ignore=shutil.ignore_patterns("llmzip.pdf"))
    (tmp_path / "benchmarks").mkdir()
    for name in ("report.py", "peers.json"):
        shutil.copy(ROOT / "benchmarks" / name, tmp_path / "benchmarks")
    shutil.copytree(report.RESULTS, tmp_path / "benchmarks" / "results")
    shutil.copy(report.README, tmp_path / "README.md")
    (tmp_path / "docs").mkdir()
    shutil.copy(report.RESULTS_PAGE, tmp_path / "docs" / "results.md")
    done = subprocess.run(["make", "-C", str(tmp_path / "paper"), f"PYTHON={sys.executable}"], capture_output=True)
    assert done.returncode == 0, done.stdout.decode()[-2000:]
    assert (tmp_path / "paper" / "llmzip.pdf").read_bytes().startswith(b"%PDF")
    assert (tmp_path / "README.md").read_text() == report.README.read_text()
    assert (tmp_path / "docs" / "results.md").read_text() == report.RESULTS_PAGE.read_text()
