"""The README's set-up commands are the ones CI runs, and its usage snippet runs as written."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def code_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_commands():
    install, test = code_blocks("bash")[:2]  # the Set-up section comes first
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install.strip() in ci and test.strip() in ci


def test_usage_snippet_runs(tmp_path):
    (snippet,) = code_blocks("python")
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "my-codefusion" / "model_index.json").is_file()
