"""README's Python example runs as written (with the default model, fetched on first use)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"


@pytest.mark.real_model
@pytest.mark.slow
def test_the_readmes_python_example_runs():
    (example,) = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    exec(compile(example, str(README), "exec"), {})


def test_the_readme_is_a_front_page():
    """Short, with every linked document there."""
    text = README.read_text()
    assert len(text.splitlines()) < 200
    links = re.findall(r"\]\(((?:docs|paper)/[^)#]*)\)", text)
    assert links and all((README.parent / link).exists() for link in links), links
