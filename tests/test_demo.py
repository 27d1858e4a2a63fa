"""The Gradio demo (`codefusion demo`, examples/demo): its frames and refusals, and the page in a real browser: the
system's Chromium (Debian's `chromium`), headless, driven by playwright."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import PAIRS, make_pipeline, tiny_config
from datasets import Dataset

from codefusion_hf import CodeFusionModel, CodeFusionRetriever
from codefusion_hf.cli import build_parser
from codefusion_hf.demo_codefusion import MAX_CANDIDATES, generate_frames, render_frame, request_problem

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# .ci/run installs Chromium and sets this, so that CI fails rather than skips when the browser is missing.
BROWSER_REQUIRED = os.environ.get("CODEFUSION_REQUIRE_BROWSER") == "1"
SCREENSHOT = ROOT / "docs" / "images" / "demo.png"


def test_a_frame_marks_the_pieces_that_changed_since_the_step_before():
    first = render_frame(0, 3, 99, ["ls -l", "df"], None)
    assert 'data-step="1"' in first and "cf-changed" not in first  # nothing to compare the first step with
    second = render_frame(1, 3, 66, ["ls -la", "df -h"], ["ls -l", "df"])
    assert '<span class="cf-changed">la</span>' in second and '<span class="cf-changed">h</span>' in second
    assert "ls -" in second and "step 2 of 3" in second and "(t = 66)" in second
    assert "&lt;b&gt;" in render_frame(0, 1, 9, ["<b>"], None)  # code is escaped, never markup


@pytest.mark.parametrize(
    "prompt, k, steps, message",
    [
        ("", 5, 10, "Type a prompt first"),
        ("   ", 5, 10, "Type a prompt first"),
        ("list files", 0, 10, f"candidates must be a whole number from 1 to {MAX_CANDIDATES}, got 0"),
        ("list files", 2.5, 10, "got 2.5"),
        ("list files", None, 10, "got None"),
        ("list files", 3, 0, "steps must be a whole number from 1"),
    ],
)
def test_a_request_the_page_cannot_serve_gets_a_message(prompt, k, steps, message):
    assert message in request_problem(prompt, k, steps)


@pytest.mark.parametrize("seed", [-1, 2**64, 0.5, None])
def test_a_seed_torch_cannot_take_gets_a_message(overfit_pipeline, seed):
    (output,) = generate_frames(overfit_pipeline, "list all files", 2, 3, "DDIM", seed)
    assert "The seed must be a whole number from 0 to 2**63 - 1" in output[0]


def test_the_frames_show_every_step_then_the_ranked_candidates(overfit_pipeline):
    """One frame per step of the call, the last also with the ranked candidates (each with its score and whether it
    parses); the model has memorised the pair, so the best candidate is its command."""
    outputs = list(generate_frames(overfit_pipeline, PAIRS[0][0], 3, 5, "committing", 0, frame_seconds=0))
    steps = [re.search(r'data-step="(\d+)"', canvas).group(1) for _, canvas, _, _ in outputs]
    assert steps == ["1", "2", "3", "4", "5", "5"]
    status, _, candidates, neighbours = outputs[-1]
    assert status.startswith("Done: 3 candidates") and neighbours == ""
    assert candidates.count('class="cf-candidate"') == 3 and f"<code>{PAIRS[0][1]}</code>" in candidates
    assert re.search(r"<td>1</td><td><code>ls -la</code></td><td>-?\d+\.\d{3}</td><td>yes</td>", candidates)
    ddim = list(generate_frames(overfit_pipeline, PAIRS[0][0], 2, 4, "DDIM", 0, frame_seconds=0))
    assert ddim[-1][0].startswith("Done: 2 candidates")


def test_the_pipeline_refusing_a_request_is_a_message_too(overfit_pipeline):
    too_many = overfit_pipeline.scheduler.config.num_train_timesteps + 1
    (output,) = generate_frames(overfit_pipeline, "list all files", 2, too_many, "DDIM", 0)
    assert "num_inference_steps must be an integer from 1 to" in output[0] and output[1:] == ("", "", "")


def test_the_pairs_a_retrieval_augmented_model_read_are_shown(code_tokenizer):
    """The call's own retrieval (`output.neighbors`), the model's `num_neighbors` of it; none for a model that reads
    none, even with a retriever."""
    torch.manual_seed(0)
    pipe = make_pipeline(CodeFusionModel(tiny_config(code_tokenizer, num_neighbors=2)), code_tokenizer)
    pipe.retriever = CodeFusionRetriever.from_dataset(
        Dataset.from_dict({"prompt": [p for p, _ in PAIRS], "code": [c for _, c in PAIRS]})
    )
    *_, (_, _, _, neighbours) = generate_frames(pipe, "show disk usage", 2, 3, "committing", 0, frame_seconds=0)
    assert neighbours.count('class="cf-neighbour"') == 2 and "<code>df -h</code>" in neighbours
    plain = make_pipeline(CodeFusionModel(tiny_config(code_tokenizer)), code_tokenizer)
    plain.retriever = pipe.retriever
    *_, (_, _, _, neighbours) = generate_frames(plain, "show disk usage", 2, 3, "committing", 0, frame_seconds=0)
    assert neighbours == ""


def test_a_language_without_a_syntax_check_shows_no_parse_column(overfit_pipeline):
    *_, (_, _, candidates, _) = generate_frames(
        overfit_pipeline, PAIRS[0][0], 2, 3, "DDIM", 0, language="other", frame_seconds=0
    )
    assert candidates.count('class="cf-candidate"') == 2 and "parses as" not in candidates


def test_the_command_line_takes_a_model_host_and_port():
    args = build_parser().parse_args(["demo", "runs/x", "--port", "7861", "--host", "0.0.0.0"])
    assert (args.command, args.model, args.port, args.host) == ("demo", "runs/x", 7861, "0.0.0.0")
    assert args.language == "bash"


def test_the_space_folder_is_a_gradio_space():
    front_matter = (ROOT / "examples" / "demo" / "README.md").read_text().split("---")[1]
    fields = dict(line.split(": ", 1) for line in front_matter.strip().splitlines())
    assert fields["sdk"] == "gradio" and fields["app_file"] == "app.py"
    assert (ROOT / "examples" / "demo" / fields["app_file"]).is_file()
    assert "codefusion-hf[demo]" in (ROOT / "examples" / "demo" / "requirements.txt").read_text()


def test_codefusion_demo_serves_the_page(overfit_pipeline, tmp_path):
    """`codefusion demo MODEL --port P` serves the app: its page's configuration answers, titled CodeFusion."""
    overfit_pipeline.save_pretrained(tmp_path / "pipeline", model_card=False)
    port, log = free_port(), tmp_path / "server.log"
    command = [sys.executable, "-m", "codefusion_hf.cli", "demo", str(tmp_path / "pipeline"), "--port", str(port)]
    with open(log, "w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=output, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    try:
        wait_for(port, server, log)
        config = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30).read())
        assert config["title"] == "CodeFusion"  # the app's own page, as Gradio describes it to the browser
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "Traceback" not in log.read_text(), log.read_text()


def test_the_space_without_a_pipeline_says_how_to_give_it_one(tmp_path):
    """app.py with no pipeline/ folder and no CODEFUSION_MODEL builds a page that says what to do, not a crash."""
    env = os.environ | {"CODEFUSION_MODEL": str(tmp_path / "nothing"), "HF_HUB_OFFLINE": "1"}
    code = "import runpy; app = runpy.run_path('examples/demo/app.py'); print(type(app['demo']).__name__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "Blocks", done.stderr


def wait_for(port: int, server: subprocess.Popen, log: Path) -> None:
    """Until a server answers on `port` (two minutes at most, and only while it runs)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served_demo(overfit_pipeline, tmp_path):
    """examples/demo/app.py serving the memorised pipeline on a free local port, its server log in a file."""
    if CHROMIUM is None and not BROWSER_REQUIRED:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    assert CHROMIUM is not None, "CODEFUSION_REQUIRE_BROWSER=1 but no chromium on PATH"
    overfit_pipeline.save_pretrained(tmp_path / "pipeline", model_card=False)
    port, log = free_port(), tmp_path / "server.log"
    env = os.environ | {"CODEFUSION_MODEL": str(tmp_path / "pipeline"), "GRADIO_ANALYTICS_ENABLED": "False"}
    env |= {"GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"}
    with open(log, "w") as output:
        server = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "demo" / "app.py")], env=env, stdout=output, stderr=output
        )
    try:
        wait_for(port, server, log)
        yield f"http://127.0.0.1:{port}", log
    finally:
        server.terminate()
        server.wait(timeout=30)


# Collects every step number the canvas shows while the answer streams in.
RECORD_STEPS = """() => {
  window.cfSteps = new Set();
  const record = () => document.querySelectorAll('#cf-canvas [data-step]').forEach(
    (frame) => window.cfSteps.add(frame.dataset.step));
  new MutationObserver(record).observe(document.body, {childList: true, subtree: true, characterData: true});
}"""


def test_the_page_streams_the_steps_and_shows_the_candidates_in_a_browser(served_demo):
    """In headless Chromium: type a prompt, press Generate, see the canvas at several steps and then k ranked
    candidates; an empty prompt and k = 0 each get a message in the page, and the server logs no traceback."""
    from playwright.sync_api import sync_playwright

    url, log = served_demo
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url)
        page.get_by_label("Prompt").fill(PAIRS[2][0])
        page.get_by_label("Candidates (k)").fill("3")
        page.evaluate(RECORD_STEPS)
        page.get_by_role("button", name="Generate").click()
        page.locator("#cf-candidates .cf-candidate").nth(2).wait_for(timeout=60_000)
        assert page.locator("#cf-candidates .cf-candidate").count() == 3
        assert page.locator("#cf-candidates").inner_text().count(PAIRS[2][1]) >= 1
        steps = page.evaluate("() => [...window.cfSteps].map(Number).sort((a, b) => a - b)")
        assert len(steps) >= 3 and steps[-1] == 10, steps  # intermediate frames, then the last of the 10 steps
        if os.environ.get("CODEFUSION_UPDATE_SCREENSHOT") == "1":  # how docs/images/demo.png was taken
            page.screenshot(path=str(SCREENSHOT), full_page=True)

        page.get_by_label("Prompt").fill("")
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("Type a prompt first").wait_for(timeout=30_000)
        page.get_by_label("Prompt").fill(PAIRS[0][0])
        page.get_by_label("Candidates (k)").fill("0")
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("must be a whole number from 1 to").wait_for(timeout=30_000)
        browser.close()
    assert "Traceback" not in log.read_text(), log.read_text()
