"""The CodeFusion demo, ready to run as a Hugging Face Space (`sdk: gradio`, README.md) or locally:

    CODEFUSION_MODEL=runs/quickstart python examples/demo/app.py

CODEFUSION_MODEL names the pipeline to serve: a saved folder or a Hub repo id (default: `pipeline/`, a folder saved
with `pipe.save_pretrained("pipeline")` beside this file). `codefusion demo MODEL` serves the same app.
"""

import os

from codefusion_hf.demo_codefusion import PAGE_CSS, build_demo

demo = build_demo(os.environ.get("CODEFUSION_MODEL", os.path.join(os.path.dirname(__file__), "pipeline")))

if __name__ == "__main__":
    demo.queue().launch(css=PAGE_CSS)
