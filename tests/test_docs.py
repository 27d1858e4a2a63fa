"""The documentation site builds, and the code in it works.

Rules for code blocks in docs/**/*.md; a block is ```python, ```bash or ```text (formulas, not run), any other fence is
an error:
- Every ```python block runs as written, in its own subprocess: cwd a temporary folder, HF_HUB_OFFLINE=1, a fresh
  HF_HOME. Write each one self-contained and quick (a tokenizer from `train_code_tokenizer`, a `tiny` preset model,
  a few training steps at most). A block right after the line `<!-- docs-test: hub -->` runs instead against the
  local Hub-compatible server of tests/hub_server.py (still no internet), as user `your-username`.
- ```bash blocks are not run: their training and evaluation runs take minutes to hours. Instead, every
  `examples/...` or `research/...` file or folder they mention (scripts, shell scripts, configs, accelerate files,
  the Space folder) must exist,
  every `codefusion` subcommand they use must exist, and every mentioned `.py` script there, and every module they
  run with `python -m examples...` / `python -m research...`, must answer `--help` with exit code 0 (once per
  distinct script, all in one subprocess that runs each as `__main__` with the `sys.path` that `python SCRIPT` or
  `python -m MODULE` gives it, so the heavy imports are paid once). Every data file they name must exist: `data/...`
  in the repository, `../shared/data/...` beside it (checked where ../shared is present, as in CI).
- A ```bash block right after the line `<!-- docs-test: run -->` is cheap and self-contained (`codefusion --help`):
  it runs as written, from the repository root. One after `<!-- docs-test: quickstart -->` uses the pipeline the
  quickstart saves: it runs as written in a copy of the layout (a tiny random pipeline in `runs/quickstart`,
  ../shared beside it, the local Hub with a token for `your-username`).
- `mkdocs build --strict` succeeds (the docs tools come with the `dev` extra, like pytest itself).
The commands of research/NOTES.md (the dated history, outside the site) are checked the cheap way too: the files they
name under examples/ and research/ exist, and so do their `codefusion` subcommands.
"""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import HubServer

from codefusion_hf.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").rglob("*.md"))
BLOCK = re.compile(
    r"(?:^<!-- docs-test: (?P<marker>[\w-]+) -->\n)?^```(?P<language>\S*)\n(?P<code>.*?)^```", re.S | re.M
)
LANGUAGES = ("python", "bash", "text")
# The product's scripts and configs (examples/) and the research tools behind the benchmarks (research/).
REPOSITORY_PATH = re.compile(r"(?<![\w./-])(?:examples|research)/[\w./-]*\w")
DATA_PATH = re.compile(r"(?<![\w./-])(?:\.\./shared/)?data/[\w./-]*\.(?:jsonl|json|csv|parquet)\b")
SHARED = ROOT.parent / "shared"
CODEFUSION_COMMAND = re.compile(r"^\s*(?:\S*/)?codefusion\s+(?P<subcommand>[^\s-]\S*)", re.M)
HUB_TOKEN = "hf_docs_test_token"
HUB_USER = "your-username"


def blocks(language: str) -> list[tuple[str, str | None, str]]:
    """(id, marker, code) of every block of `language` in docs/**/*.md, in order."""
    found = []
    for page in DOCS:
        matches = [m for m in BLOCK.finditer(page.read_text()) if m["language"] == language]
        found += [(f"{page.name}:{i}", m["marker"], m["code"]) for i, m in enumerate(matches, start=1)]
    return found


PYTHON_BLOCKS = blocks("python")
BASH_BLOCKS = blocks("bash")
BASH_TEXT = "\n".join(code for _, _, code in BASH_BLOCKS)
# `python -m research.baselines.train_autoregressive`: a tool that imports another folder's module runs from the root.
MODULE_COMMAND = re.compile(r"python -m ((?:examples|research)(?:\.\w+)+)")
MODULES = sorted(set(MODULE_COMMAND.findall(BASH_TEXT)))
SCRIPTS = sorted({path for path in REPOSITORY_PATH.findall(BASH_TEXT) if path.endswith(".py")})


def environment(home: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("HF_ENDPOINT", "HF_TOKEN")}
    env |= {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "NO_MKDOCS_2_WARNING": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return env | extra


def test_docs_have_code_to_check():
    pages = {"index.md", "concepts.md", "sampling.md", "training-guide.md", "evaluation.md", "benchmarks.md", "hub.md"}
    assert {page.name for page in DOCS} >= pages
    assert len(PYTHON_BLOCKS) >= 5 and SCRIPTS
    assert any(path.startswith("research/") for path in SCRIPTS)


def test_code_blocks_have_known_languages():
    unknown = [
        f"{page.relative_to(ROOT)}: ```{m['language']}"
        for page in DOCS
        for m in BLOCK.finditer(page.read_text())
        if m["language"] not in LANGUAGES
    ]
    assert not unknown, f"code blocks this test does not check (use one of {LANGUAGES}): {unknown}"


def test_mkdocs_build_strict(tmp_path):
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
    result = subprocess.run(
        [*command, "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=environment(tmp_path / "hf-home"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "model" / "index.html").is_file()


@pytest.fixture(scope="module")
def hub():
    server = HubServer(tokens={HUB_TOKEN: HUB_USER}).start()
    yield server
    server.stop()
    server.assert_healthy()


@pytest.mark.parametrize("block_id, marker, code", PYTHON_BLOCKS, ids=[block[0] for block in PYTHON_BLOCKS])
def test_python_block_runs(block_id, marker, code, tmp_path, request):
    assert marker in (None, "hub"), f"{block_id}: unknown marker {marker!r} on a python block"
    env = environment(tmp_path / "hf-home")
    if marker == "hub":
        server = request.getfixturevalue("hub")
        env |= {"HF_ENDPOINT": server.url, "HF_TOKEN": HUB_TOKEN, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, f"{block_id} failed:\n{result.stderr[-5000:]}"


def test_bash_blocks_name_existing_files():
    modules = {module.replace(".", "/") + ".py" for module in MODULES}
    mentioned = sorted(set(REPOSITORY_PATH.findall(BASH_TEXT)) | modules)
    assert mentioned
    missing = [path for path in mentioned if not (ROOT / path).exists()]  # a file, or a folder to upload
    assert not missing, f"bash blocks in docs/ mention files that do not exist: {missing}"


def test_bash_blocks_name_existing_data_files():
    mentioned = sorted(set(DATA_PATH.findall(BASH_TEXT)))
    assert any(path.startswith("../shared/") for path in mentioned)
    checkable = [path for path in mentioned if SHARED.is_dir() or not path.startswith("../shared/")]
    missing = [path for path in checkable if not (ROOT / path).is_file()]
    assert not missing, f"bash blocks in docs/ name data files that do not exist: {missing}"


def test_bash_blocks_use_existing_codefusion_subcommands():
    (subcommands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    used = set(CODEFUSION_COMMAND.findall(BASH_TEXT))
    assert used, "no codefusion command found in the bash blocks"
    assert used <= set(subcommands.choices), (
        f"unknown codefusion subcommands: {sorted(used - set(subcommands.choices))}"
    )


def test_research_notes_commands_name_existing_files_and_subcommands():
    notes = (ROOT / "research" / "NOTES.md").read_text()
    commands = "\n".join(m["code"] for m in BLOCK.finditer(notes) if m["language"] == "bash")
    # `git show COMMIT:examples/...` reads a file where it was at that commit: not a path of today's tree.
    mentioned = {m[0] for m in REPOSITORY_PATH.finditer(commands) if commands[m.start() - 1] != ":"}
    assert any(path.startswith("research/") for path in mentioned)
    missing = sorted(path for path in mentioned if not (ROOT / path).is_file())
    assert not missing, f"research/NOTES.md's commands name files that do not exist: {missing}"
    (subcommands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    unknown = set(CODEFUSION_COMMAND.findall(commands)) - set(subcommands.choices)
    assert not unknown, f"research/NOTES.md uses unknown codefusion subcommands: {sorted(unknown)}"


# Runs each script (a path) or module (a dotted name) given on the command line as `python SCRIPT --help` or
# `python -m MODULE --help` would: as __main__, with argv, and with the script's folder first on sys.path instead of
# the current folder (for a module, the current folder first). Prints {target: [exit code, output]} as JSON. One
# process for all: they share their heavy imports (torch, transformers, datasets), which take most of each `--help`.
HELP_RUNNER = """
import contextlib, io, json, os, runpy, sys, traceback
results = {}
outside = [path for path in sys.path if path not in ("", os.getcwd())]
for target in sys.argv[1:]:
    is_script = target.endswith(".py")
    sys.argv = [target, "--help"]
    sys.path[:] = [os.path.dirname(os.path.abspath(target)) if is_script else os.getcwd(), *outside]
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            if is_script:
                runpy.run_path(target, run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
        code = "finished without exiting: --help was not handled"
    except SystemExit as exit:
        code = exit.code or 0
    except BaseException:
        code = traceback.format_exc()
    results[target] = [code, output.getvalue()]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def help_results(tmp_path_factory):
    result = subprocess.run(
        [sys.executable, "-c", HELP_RUNNER, *SCRIPTS, *MODULES],
        cwd=ROOT,
        env=environment(tmp_path_factory.mktemp("hf-home")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("script", SCRIPTS + MODULES)
def test_mentioned_script_answers_help(script, help_results):
    code, output = help_results[script]
    assert code == 0, f"{script} --help did not exit with 0:\n{code}\n{output[-3000:]}"
    assert "usage:" in output


RUN_BLOCKS = [block for block in BASH_BLOCKS if block[1] == "run"]
QUICKSTART_BLOCKS = [block for block in BASH_BLOCKS if block[1] == "quickstart"]


def test_bash_markers_are_known():
    unknown = {marker for _, marker, _ in BASH_BLOCKS} - {None, "run", "quickstart"}
    assert not unknown, f"unknown docs-test markers on bash blocks: {unknown}"


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data beside the repository")
@pytest.mark.parametrize("block_id, marker, code", QUICKSTART_BLOCKS, ids=[block[0] for block in QUICKSTART_BLOCKS])
def test_quickstart_bash_block_runs(block_id, marker, code, tmp_path, tiny_pipeline, hub):
    repo = tmp_path / "repo"
    tiny_pipeline.save_pretrained(repo / "runs" / "quickstart")
    (tmp_path / "shared").symlink_to(SHARED)
    env = environment(tmp_path / "hf-home", HF_ENDPOINT=hub.url, HF_TOKEN=HUB_TOKEN, HF_HUB_OFFLINE="0")
    env |= {"HF_HUB_DISABLE_XET": "1"}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{block_id} failed:\n{result.stderr[-3000:]}"
    assert result.stdout.count("\n1. ") >= 1 and "step   20" in result.stdout  # generate, with --show-steps
    assert (repo / "runs" / "eval" / "quickstart" / "metrics.json").is_file()  # evaluate
    assert "Pushed runs/quickstart to" in result.stdout  # push


@pytest.mark.parametrize("block_id, marker, code", RUN_BLOCKS, ids=[block[0] for block in RUN_BLOCKS])
def test_cheap_bash_block_runs(block_id, marker, code, tmp_path):
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=ROOT,
        env=environment(tmp_path / "hf-home"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{block_id} failed:\n{result.stderr[-3000:]}"
