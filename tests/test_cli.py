"""The `codefusion` command: output, exit codes, one-line errors. User mistakes run the installed command through
subprocess; the commands that work run in this process (`cli.main`), which saves starting Python each time."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import PAIRS

CODEFUSION = shutil.which("codefusion", path=str(Path(sys.executable).parent)) or shutil.which("codefusion")
pytestmark = pytest.mark.skipif(CODEFUSION is None, reason="the codefusion console script is not installed")


def run(*args):
    return subprocess.run([CODEFUSION, *args], capture_output=True, text=True, env=os.environ, timeout=120)


def run_here(capsys, *args) -> SimpleNamespace:
    """`codefusion ARGS` through `cli.main` in this process, with `run`'s result fields."""
    from codefusion_hf.cli import main

    capsys.readouterr()
    try:
        returncode = main(list(args))
    except SystemExit as exit_info:  # a usage error
        returncode = exit_info.code
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=returncode, stdout=captured.out, stderr=captured.err)


@pytest.fixture(scope="module")
def saved_pipeline(overfit_pipeline, tmp_path_factory):
    path = tmp_path_factory.mktemp("pipeline")
    overfit_pipeline.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("command", [[], ["generate"], ["evaluate"], ["push"]])
def test_help(command):
    result = run(*command, "--help")
    assert result.returncode == 0 and "usage: codefusion" in result.stdout


# The package imports its classes on first use: the command's help and the metrics must not pay for torch.
LIGHT_IMPORTS = """
import contextlib, io, sys
import codefusion_hf.metrics
from codefusion_hf.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main(["evaluate", "--help"])
print(" ".join(name for name in ("torch", "diffusers", "transformers") if name in sys.modules))
"""


def test_help_and_metrics_do_not_import_torch():
    result = subprocess.run([sys.executable, "-c", LIGHT_IMPORTS], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_generate_prints_ranked_candidates(saved_pipeline, capsys):
    result = run_here(capsys, "generate", saved_pipeline, "list all files", "-k", "2", "--steps", "20", "--seed", "0")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["1. ls -la", "2. ls -la"]


def test_generate_with_commit_tokens(saved_pipeline, capsys):
    result = run_here(
        capsys, "generate", saved_pipeline, "list all files", "-k", "1", "--steps", "10", "--commit-tokens"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().split("\t")[0] == "1. ls -la"


def test_generate_and_evaluate_in_bfloat16(saved_pipeline, capsys, tmp_path):
    result = run_here(
        capsys,
        "generate",
        saved_pipeline,
        "list all files",
        "-k",
        "1",
        "--steps",
        "10",
        "--dtype",
        "bfloat16",
        "--commit-tokens",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().split("\t")[0] == "1. ls -la"
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "code": c}) + "\n" for p, c in PAIRS))
    args = ["evaluate", saved_pipeline, str(data), "--output-dir", str(tmp_path / "out"), "-k", "1", "--commit-tokens"]
    result = run_here(capsys, *args, "--dtype", "bfloat16")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["dtype"] == "bfloat16" and metrics["exact_match@1"] == 1.0
    result = run_here(capsys, *args)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["dtype"] == "float32"


def test_generate_refines_init_code(saved_pipeline, capsys):
    args = ["generate", saved_pipeline, "list all files", "-k", "1", "--steps", "10", "--init-code", "ls -la"]
    result = run_here(capsys, *args, "--strength", "0.5", "--show-steps")
    assert result.returncode == 0, result.stderr
    assert len([line for line in result.stdout.splitlines() if line.startswith("step")]) == 5  # half the schedule
    assert result.stdout.strip().splitlines()[-1].split("\t")[0] == "1. ls -la"


def test_generate_show_steps(saved_pipeline, capsys):
    result = run_here(capsys, "generate", saved_pipeline, "list all files", "-k", "1", "--steps", "5", "--show-steps")
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stdout.splitlines() if line.startswith("step")]
    assert len(steps) == 5 and steps[-1].endswith("'ls -la'")


def test_evaluate_writes_files(saved_pipeline, capsys, tmp_path):
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "code": c}) + "\n" for p, c in PAIRS))
    out = str(tmp_path / "out")
    result = run_here(
        capsys, "evaluate", saved_pipeline, str(data), "--output-dir", out, "-k", "1", "--rounding", "decoder"
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["exact_match@1"] == 1.0 and metrics["num_prompts"] == len(PAIRS)
    assert metrics["rounding"] == "decoder" and metrics["commit_tokens"] is False
    assert len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()) == len(PAIRS)
    result = run_here(capsys, "evaluate", saved_pipeline, str(data), "--output-dir", out, "-k", "1", "--commit-tokens")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["commit_tokens"] is True
    early = ["--commit-tokens", "--stop-when-stable", "2", "--settled-margin", "1", "--ranking", "consensus"]
    result = run_here(capsys, "evaluate", saved_pipeline, str(data), "--output-dir", out, "-k", "1", *early)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["stop_when_stable"] == 2 and metrics["settled_margin"] == 1 and metrics["ranking"] == "consensus"
    assert metrics["exact_match@1"] == 1.0 and metrics["code_length"] == "full" and metrics["length_beam"] == 1
    result = run_here(capsys, "evaluate", saved_pipeline, str(data), "--output-dir", out, "--code-length", "12")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["code_length"] == 12


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "/no/such/folder", "ls"], "/no/such/folder is not a folder, nor a Hub repo id"),
        (["generate", "nosuchfolder", "ls"], "nosuchfolder is not a local folder, and as a Hub repo id it could not"),
        (["generate", "MODEL", "   "], "prompt is empty"),
        (["generate", "MODEL", "ls", "-k", "0"], "must be a positive integer"),
        (["generate", "MODEL", "ls", "-k", "two"], "invalid positive_int value"),
        (["generate", "MODEL", "ls", "--settled-margin", "2"], "CodeFusionScheduler commits nothing"),
        (["generate", "MODEL", "ls", "--code-length", "short"], "--code-length: must be 'predicted', 'full' or a"),
        (["generate", "MODEL", "ls", "--code-length", "0"], "--code-length: must be a positive integer"),
        (["generate", "MODEL", "ls", "--code-length", "predicted"], "needs a model with a length head"),
        (["generate", "MODEL", "ls", "-k", "2", "--length-beam", "2"], "pass code_length='predicted'"),
        (["generate", "MODEL", "ls", "--length-beam", "99"], "length_beam must be None or an integer from 1 to"),
        (["generate", "MODEL", "ls", "--init-code", "ls", "--strength", "2"], "strength must be a number in (0, 1]"),
        (["push", "/no/such/folder", "user/repo"], "model_index.json is missing"),
        (["generate", "MODEL", "ls", "-k", "10000000000000"], "not enough memory for this many candidates"),
        (["generate", "MODEL", "ls", "--seed", str(2**64)], "--seed: must be an integer from 0 to 2**64 - 1"),
        (["evaluate", "MODEL", "EMPTY", "--output-dir", "OUT"], "EMPTY is empty: it holds no rows"),
        (["evaluate", "MODEL", "ZERO", "--output-dir", "OUT"], "ZERO is empty: it holds no rows"),
        (["evaluate", "MODEL", "BROKEN", "--output-dir", "OUT"], "BROKEN could not be read as jsonl: line 2 is not"),
        (["evaluate", "MODEL", "DATA", "--output-dir", "OUT", "--device", "bogus"], "'bogus' is not a torch device"),
        # No machine has a 100th GPU: the same one-line refusal with CUDA or without.
        (
            ["evaluate", "MODEL", "DATA", "--output-dir", "OUT", "--device", "cuda:99"],
            "device 'cuda:99' was asked for, but this",
        ),
        (["evaluate", "MODEL", "DATA", "--output-dir", "DATA/out"], "DATA/out cannot be created (Not a directory)"),
        (["generate", "GARBLED", "ls"], "model_index.json is not valid JSON"),
    ],
)
def test_user_mistakes_are_one_line_with_exit_code_2(saved_pipeline, tmp_path, args, message):
    garbled = tmp_path / "garbled"
    shutil.copytree(saved_pipeline, garbled)
    (garbled / "model_index.json").write_bytes(bytes(range(128, 256)))
    files = {
        "EMPTY": "\n",
        "ZERO": "",
        "BROKEN": '{"prompt": "ls", "code": "ls"}\n{"prompt": \n',
        "DATA": '{"prompt": "a", "code": "b"}',
    }
    for name, text in files.items():
        (tmp_path / f"{name}.jsonl").write_text(text)
    places = {"MODEL": saved_pipeline, "GARBLED": str(garbled), "OUT": str(tmp_path / "out")}
    places |= {name: str(tmp_path / f"{name}.jsonl") for name in files}
    result = run(*[places.get(a, a).replace("DATA/", places["DATA"] + "/") for a in args])
    for name in ("EMPTY", "ZERO", "BROKEN"):
        message = message.replace(name, places[name])
    message = message.replace("DATA/", places["DATA"] + "/")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_prompt_that_is_not_utf8_is_named(saved_pipeline):
    result = subprocess.run([CODEFUSION, "generate", saved_pipeline, b"ls \xff\xfe"], capture_output=True, timeout=120)
    stderr = result.stderr.decode()
    assert result.returncode == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert (
        "prompt[0] 'ls \\udcff\\udcfe' holds '\\udcff' at position 3" in stderr
        and "decode the text as UTF-8" in stderr
    )


def test_rounding_choices_are_the_libraries():
    from codefusion_hf import cli, constants

    (generate,) = [a for a in cli.build_parser()._actions if a.dest == "command"]
    (rounding,) = [a for a in generate.choices["generate"]._actions if a.dest == "rounding"]
    assert tuple(rounding.choices) == constants.ROUNDINGS


def test_generate_prints_each_prompt_with_its_ranked_candidates(saved_pipeline, capsys):
    """Several prompts: each is printed, followed by its k ranked candidates; an unknown rounding is a usage error."""
    args = ["generate", saved_pipeline, "list files", "count lines", "-k", "2", "--steps", "3"]
    result = run_here(capsys, *args, "--rounding", "decoder")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for prompt in ("list files", "count lines"):
        ranks = lines[lines.index(prompt) + 1 : lines.index(prompt) + 3]
        assert [line.split(".")[0] for line in ranks] == ["1", "2"] and all("\t(score -" in line for line in ranks)
    result = run_here(capsys, *args, "--rounding", "round")
    assert result.returncode == 2 and "invalid choice: 'round'" in result.stderr


def evaluate_pairs(capsys, saved_pipeline, tmp_path, *flags) -> dict:
    """`codefusion evaluate` on the PAIRS; the metrics it wrote, after checking its predictions are in order."""
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "code": c}) + "\n" for p, c in PAIRS))
    result = run_here(capsys, "evaluate", saved_pipeline, str(data), "--output-dir", str(tmp_path / "out"), *flags)
    assert result.returncode == 0, result.stderr
    rows = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(row)["reference"] for row in rows] == [code for _, code in PAIRS]
    return json.loads((tmp_path / "out" / "metrics.json").read_text())


def test_evaluate_with_custom_timesteps(saved_pipeline, tmp_path, capsys):
    """A custom schedule is used, recorded, and still regenerates the memorised pairs."""
    timesteps = ["99", "90", "80", "60", "40", "20", "0"]
    metrics = evaluate_pairs(capsys, saved_pipeline, tmp_path, "-k", "1", "--timesteps", *timesteps)
    assert metrics["timesteps"] == [int(t) for t in timesteps] and metrics["num_inference_steps"] == 7
    assert metrics["exact_match@1"] == 1.0


def test_evaluate_with_commit_tokens(saved_pipeline, tmp_path, capsys):
    """--commit-tokens samples with the commit scheduler, records it, and regenerates the memorised pairs."""
    metrics = evaluate_pairs(capsys, saved_pipeline, tmp_path, "-k", "2", "--commit-tokens", "--device", "cpu")
    assert metrics["commit_tokens"] is True and metrics["scheduler"] == "CodeFusionCommitScheduler"
    assert metrics["rounding"] == "none"  # the model's own: it only shapes a self-conditioning estimate here
    assert metrics["exact_match@1"] == 1.0


def test_the_sampling_options_are_one_object_for_both_commands():
    """generate and evaluate read the same sampling options into one SamplingOptions, each under its own name;
    their defaults differ in the steps only."""
    from codefusion_hf.cli import build_parser, sampling_options
    from codefusion_hf.sampling_options_codefusion import SamplingOptions

    flags = ["-k", "3", "--steps", "7", "--commit-tokens", "--settled-margin", "2", "--code-length", "predicted"]
    flags += ["--draft-candidates", "2", "--strength", "0.5"]
    generate = sampling_options(build_parser().parse_args(["generate", "M", "ls", *flags]))
    evaluate = sampling_options(build_parser().parse_args(["evaluate", "M", "F", "--output-dir", "O", *flags]))
    expected = SamplingOptions(
        num_inference_steps=7,
        num_return_sequences=3,
        commit_tokens=True,
        settled_margin=2,
        code_length="predicted",
        draft_candidates=2,
        strength=0.5,
    )
    assert evaluate == expected and generate == expected
    assert sampling_options(build_parser().parse_args(["evaluate", "M", "F", "--output-dir", "O"])) == SamplingOptions(
        num_inference_steps=20, num_return_sequences=5
    )
    with pytest.warns(FutureWarning, match="--canvas-margin is deprecated: use --settled-margin"):
        old_name = build_parser().parse_args(["generate", "M", "ls", "--canvas-margin", "3"])
    assert sampling_options(old_name).settled_margin == 3
