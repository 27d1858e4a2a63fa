"""The CodeFusion demo, ready to run as a Hugging Face Space (`sdk: gradio`, README.md) or locally:

    CODEFUSION_MODEL=runs/quickstart python examples/demo/app.py

CODEFUSION_MODEL names the pipeline to serve: a saved folder or a Hub repo id (default: `pipeline/`, a folder saved
with `pipe.save_pretrained("pipeline")` beside this file). `codefusion demo MODEL` serves the same app.
"""

import os

import gradio as gr

from codefusion_hf.demo_codefusion import PAGE_CSS, build_demo

MODEL = os.environ.get("CODEFUSION_MODEL", os.path.join(os.path.dirname(__file__), "pipeline"))
try:
    demo = build_demo(MODEL)
except OSError as error:  # no pipeline yet: a page that says how to give it one, not a crashed Space
    with gr.Blocks(title="CodeFusion") as demo:
        gr.Markdown(
            f"# CodeFusion\nNo pipeline to serve: {error}\n\nSave one beside app.py "
            '(`pipe.save_pretrained("pipeline")`) or set the variable `CODEFUSION_MODEL` to a saved folder or a Hub '
            "repo id, then restart."
        )

if __name__ == "__main__":
    demo.queue().launch(css=PAGE_CSS)
