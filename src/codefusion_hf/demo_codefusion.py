"""The Gradio demo of a saved pipeline: a prompt in, every candidate's canvas shown step by step as it settles (the
tokens that changed at that step highlighted), then the ranked candidates with their scores and whether they parse,
and the retrieved pairs a retrieval-augmented model read. `codefusion demo MODEL` and `examples/demo/app.py` (a
Hugging Face Space) launch it; it needs the `demo` extra (`pip install codefusion-hf[demo]`)."""

import html
import os
import re
import time
from collections.abc import Iterator

from .constants import SYNTAX_LANGUAGES
from .metrics import is_valid_syntax
from .sampling_options_codefusion import SamplingOptions

# The most candidates and steps the page asks for: a shared demo should not be made to sample for minutes.
MAX_CANDIDATES = 16
MAX_STEPS = 200
SAMPLERS = {"committing": True, "DDIM": False}  # the sampler's name in the page: whether it commits tokens
PAGE_CSS = """
.cf-frame code, .cf-table code { white-space: pre; }
.cf-changed { background: #ffe08a; border-radius: 3px; }
.cf-table td, .cf-table th { padding: 2px 8px; text-align: left; }
"""


def token_pieces(code: str) -> list[str]:
    """`code` as the pieces a reader compares between steps: runs of word characters, of spaces, and single
    symbols."""
    return re.findall(r"\w+|\s+|[^\w\s]", code)


def render_frame(step: int, num_steps: int, timestep: int, codes: list[str], previous: list[str] | None) -> str:
    """One step's canvases as HTML, one line per candidate, the pieces that differ from the step before marked."""
    lines = []
    for rank, code in enumerate(codes):
        before = token_pieces(previous[rank]) if previous else []
        pieces = []
        for position, piece in enumerate(token_pieces(code)):
            text = html.escape(piece)
            changed = previous is not None and (position >= len(before) or before[position] != piece)
            pieces.append(f'<span class="cf-changed">{text}</span>' if changed and piece.strip() else text)
        lines.append(f'<div class="cf-canvas"><code>{"".join(pieces) or "&nbsp;"}</code></div>')
    header = f"<p><b>step {step + 1} of {num_steps}</b> (t = {timestep})</p>"
    return f'<div class="cf-frame" data-step="{step + 1}">{header}{"".join(lines)}</div>'


def render_candidates(codes: list[str], scores: list[float], language: str) -> str:
    """The ranked candidates as an HTML table: rank, code, ranking score and, for a language with a syntax check,
    whether the code parses."""
    checked = language in SYNTAX_LANGUAGES
    rows = "".join(
        f'<tr class="cf-candidate"><td>{rank}</td><td><code>{html.escape(code)}</code></td><td>{score:.3f}</td>'
        + (f"<td>{'yes' if is_valid_syntax(code, language) else 'no'}</td>" if checked else "")
        + "</tr>"
        for rank, (code, score) in enumerate(zip(codes, scores), start=1)
    )
    parses = f"<th>parses as {html.escape(language)}</th>" if checked else ""
    return f'<table class="cf-table"><tr><th>rank</th><th>code</th><th>score</th>{parses}</tr>{rows}</table>'


def render_neighbours(neighbours: list | None, num_read: int) -> str:
    """The retrieved pairs a call used (`output.neighbors` of one prompt): the first `num_read`, those a
    retrieval-augmented model reads, as HTML; empty when the call used none."""
    rows = "".join(
        f'<tr class="cf-neighbour"><td>{html.escape(pair.prompt)}</td><td><code>{html.escape(pair.code)}</code></td>'
        f"<td>{pair.score:.3f}</td></tr>"
        for pair in (neighbours or [])[:num_read]
    )
    if not rows:
        return ""
    return f'<table class="cf-table"><tr><th>retrieved prompt</th><th>its code</th><th>score</th></tr>{rows}</table>'


def request_problem(
    prompt: str, num_candidates: float | None, num_steps: float | None, seed: float | None = 0
) -> str | None:
    """What is wrong with a request from the page, said so that the person can fix it, or None."""
    if not prompt or not prompt.strip():
        return "Type a prompt first, e.g. *find files larger than 10 megabytes in /var/log*."
    if num_candidates is None or num_candidates != int(num_candidates) or not 1 <= num_candidates <= MAX_CANDIDATES:
        return f"The number of candidates must be a whole number from 1 to {MAX_CANDIDATES}, got {num_candidates}."
    if num_steps is None or num_steps != int(num_steps) or not 1 <= num_steps <= MAX_STEPS:
        return f"The number of steps must be a whole number from 1 to {MAX_STEPS}, got {num_steps}."
    if seed is None or seed != int(seed) or not 0 <= seed < 2**63:
        return f"The seed must be a whole number from 0 to 2**63 - 1, got {seed}."
    return None


def generate_frames(
    pipe,
    prompt: str,
    num_candidates: float | None,
    num_steps: float | None,
    sampler: str,
    seed: float | None,
    language: str = "bash",
    frame_seconds: float = 0.2,
) -> Iterator[tuple[str, str, str, str]]:
    """The page's outputs (message, step canvas, ranked candidates, retrieved pairs) after each step of one call:
    the call records every step (`return_trajectory`), whose canvases are then shown one after the other,
    `frame_seconds` apart. A request the page or the pipeline refuses gives its message, no traceback."""
    import torch

    problem = request_problem(prompt, num_candidates, num_steps, seed)
    if problem is not None:
        yield f"**{problem}**", "", "", ""
        return
    options = SamplingOptions(
        num_inference_steps=int(num_steps), num_return_sequences=int(num_candidates), commit_tokens=SAMPLERS[sampler]
    )
    sampling_pipe = options.prepare_pipeline(pipe)  # a pipeline of the same components with the committing sampler
    sampling_pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator(sampling_pipe.device).manual_seed(int(seed))
    try:
        output = sampling_pipe(prompt.strip(), generator=generator, return_trajectory=True, **options.call_kwargs())
    except ValueError as error:  # a request the pipeline refuses (e.g. more steps than the model was trained on)
        yield f"**{error}**", "", "", ""
        return
    neighbours = render_neighbours(output.neighbors and output.neighbors[0], pipe.model.config.num_neighbors)
    previous = None
    for entry in output.trajectory:
        codes = entry["code"][0]
        frame = render_frame(entry["step"], len(output.trajectory), entry["timestep"], codes, previous)
        yield "Denoising...", frame, "", neighbours
        previous = codes
        time.sleep(frame_seconds)
    candidates = render_candidates(output.code[0], output.scores[0], language)
    yield f"Done: {len(output.code[0])} candidates, best first.", frame, candidates, neighbours


def build_demo(pipeline, language: str = "bash", frame_seconds: float = 0.2):
    """A `gradio.Blocks` app around `pipeline` (a [`CodeFusionPipeline`], or a saved folder or Hub id to load);
    launch it with `css=PAGE_CSS` (`launch_demo` does)."""
    try:
        import gradio as gr
    except ImportError:
        raise ImportError("The demo needs Gradio: pip install 'codefusion-hf[demo]'.") from None
    import torch

    from .pipeline_codefusion import CodeFusionPipeline

    if isinstance(pipeline, CodeFusionPipeline):
        pipe, name = pipeline, pipeline.name_or_path or "a CodeFusion pipeline"
    else:  # named as given: a Hub repo id loads from a snapshot folder named by its commit
        pipe, name = CodeFusionPipeline.from_pretrained(pipeline), str(pipeline)
        if torch.cuda.is_available():
            pipe = pipe.to("cuda")
    name = os.path.basename(os.path.normpath(name)) if os.path.isabs(name) else name  # a folder by its name

    def generate(prompt, num_candidates, num_steps, sampler, seed):
        yield from generate_frames(pipe, prompt, num_candidates, num_steps, sampler, seed, language, frame_seconds)

    with gr.Blocks(title="CodeFusion", analytics_enabled=False) as demo:
        gr.Markdown(
            f"# CodeFusion\nNatural language to {language} by diffusion ({html.escape(str(name))}): every candidate "
            "is revised as a whole at each step; the highlighted pieces changed at that step."
        )
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", placeholder="find files larger than 10 megabytes in /var/log", scale=4)
            button = gr.Button("Generate", variant="primary", scale=1)
        with gr.Row():
            num_candidates = gr.Number(label="Candidates (k)", value=5, precision=0)
            num_steps = gr.Number(label="Steps", value=10, precision=0)
            sampler = gr.Radio(list(SAMPLERS), value="committing", label="Sampler")
            seed = gr.Number(label="Seed", value=0, precision=0)
        status = gr.Markdown(elem_id="cf-status")
        canvas = gr.HTML(label="Canvas", elem_id="cf-canvas")
        candidates = gr.HTML(label="Ranked candidates", elem_id="cf-candidates")
        neighbours = gr.HTML(label="Retrieved pairs", elem_id="cf-neighbours")
        inputs, outputs = [prompt, num_candidates, num_steps, sampler, seed], [status, canvas, candidates, neighbours]
        button.click(generate, inputs, outputs)
        prompt.submit(generate, inputs, outputs)
    return demo


def launch_demo(pipeline, host: str = "127.0.0.1", port: int | None = None, language: str = "bash") -> None:
    """Serve the demo of `pipeline` until interrupted, offline (Gradio's usage analytics off)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = build_demo(pipeline, language=language).queue()
    demo.launch(server_name=host, server_port=port, css=PAGE_CSS, show_error=False)


__all__ = ["build_demo", "launch_demo"]
