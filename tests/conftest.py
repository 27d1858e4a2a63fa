"""Shared fixtures: offline Hub settings, a tiny code tokenizer and tiny CodeFusion models, and a local Hub
(hub_server.py) for the tests that push and download."""

import json
import os
import tempfile
from collections.abc import Iterator

# Before any Hugging Face import: never reach the Hub, never touch the user's cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="codefusion-test-hf-home-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers.utils.hub as transformers_hub  # noqa: E402
from hub_server import HubServer  # noqa: E402
from huggingface_hub import HfApi, constants  # noqa: E402
from huggingface_hub.hf_api import api as default_api  # noqa: E402

from codefusion_hf import (  # noqa: E402
    CodeFusionConfig,
    CodeFusionModel,
    CodeFusionPipeline,
    CodeFusionScheduler,
    train_code_tokenizer,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Prompt/code pairs written for these tests.
PAIRS = [
    ("list all files", "ls -la"),
    ("show disk usage", "df -h"),
    ("find python files", "find . -name '*.py'"),
    ("count lines in a.txt", "wc -l a.txt"),
]


# The local Hub's account with write access.
TOKEN = "hf_test_write_token"
USER = "user"


def make_code_tokenizer():
    """A code tokenizer trained on PAIRS: a fresh one each call (`code_tokenizer` is one for the whole session)."""
    corpus = [text for pair in PAIRS for text in pair] * 5
    return train_code_tokenizer(corpus, vocab_size=300, min_frequency=1)


@pytest.fixture(scope="session")
def code_tokenizer():
    return make_code_tokenizer()


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def flip_tensor_byte(path: Path) -> None:
    """Flip one bit in the middle of a safetensors file's tensor data, as a bad disk or transfer would."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[(start + len(data)) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def tiny_config(tokenizer, **overrides) -> CodeFusionConfig:
    return CodeFusionConfig.from_preset("tiny", vocab_size=len(tokenizer), dropout=0.0, **overrides)


@pytest.fixture
def tiny_model(code_tokenizer):
    torch.manual_seed(0)
    return CodeFusionModel(tiny_config(code_tokenizer))


def make_pipeline(model, tokenizer, scheduler_class=CodeFusionScheduler) -> CodeFusionPipeline:
    """A pipeline sampling with the model's training schedule."""
    scheduler = scheduler_class.from_config(model.noise_scheduler.config)
    pipe = CodeFusionPipeline(model=model, scheduler=scheduler, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def with_scheduler(pipe: CodeFusionPipeline, scheduler_class) -> CodeFusionPipeline:
    """A pipeline of the same components (the same model object) sampling with `scheduler_class`, on the same
    schedule: how a user swaps the committing sampler in."""
    swapped = CodeFusionPipeline(**pipe.components | {"scheduler": scheduler_class.from_config(pipe.scheduler.config)})
    swapped.set_progress_bar_config(disable=True)
    return swapped


@pytest.fixture
def tiny_pipeline(tiny_model, code_tokenizer):
    return make_pipeline(tiny_model, code_tokenizer)


def seeded(pipe, prompts, seed=0, **kwargs):
    return pipe(prompts, num_inference_steps=5, generator=torch.Generator().manual_seed(seed), **kwargs)


def overfit(code_tokenizer, canvas_margin: int | None = None, **config_overrides) -> CodeFusionPipeline:
    """A tiny model trained with a plain loop until it has memorised PAIRS (about 5 s on one CPU core); with
    `canvas_margin`, each pair on a canvas of its code plus that margin, as the trainer's option trains batches of
    code of one length."""
    torch.manual_seed(0)
    model = CodeFusionModel(tiny_config(code_tokenizer, canvas_margin=canvas_margin, **config_overrides))
    pairs = [PAIRS] if canvas_margin is None else [[pair] for pair in PAIRS]  # batches: one canvas length each
    batches = []
    for batch in pairs:
        prompts = code_tokenizer([prompt for prompt, _ in batch], padding=True, return_tensors="pt")
        labels = code_tokenizer([code for _, code in batch], padding=True, return_tensors="pt")["input_ids"]
        repeats = 8 * len(PAIRS) // len(batch)
        batches.append(
            {
                "input_ids": prompts["input_ids"].repeat(repeats, 1),
                "attention_mask": prompts["attention_mask"].repeat(repeats, 1),
                "labels": labels.repeat(repeats, 1),
                "canvas_length": None if canvas_margin is None else labels.shape[1] + canvas_margin,
            }
        )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(400):
        loss = model(**batches[step % len(batches)]).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return make_pipeline(model.eval(), code_tokenizer)


@pytest.fixture(scope="session")
def overfit_pipeline(code_tokenizer):
    return overfit(code_tokenizer)


def record_denoiser_passes(model, monkeypatch, outputs=None):
    """Record every denoiser pass of the model's forward calls (the gradient-free ones and the trained one) as
    (positional arguments: noisy canvas, timesteps, prompt states, prompt mask, self-condition, ...; whether
    gradients were on), and their model outputs in `outputs` when given."""
    calls, states = [], model._denoiser_states

    def recording(*args, **kwargs):
        calls.append((args, torch.is_grad_enabled()))
        result = states(*args, **kwargs)
        if outputs is not None:
            outputs.append(model.denoiser_out(result.last_hidden_state))
        return result

    monkeypatch.setattr(model, "_denoiser_states", recording)
    return calls


@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    """The local Hub, with huggingface_hub pointed at it and offline mode off for this module only.

    The client reads HF_ENDPOINT and HF_HUB_OFFLINE at import time, so the copies in `constants`, the module-level
    `HfApi` behind `huggingface_hub.create_repo` & co. and transformers' cached `HfApi` are patched, then restored.
    At teardown, fails if the client called an endpoint the server does not implement (501) or the server failed.
    Module-scoped: the repos of one test module are not those of another.
    """
    server = HubServer(tokens={TOKEN: USER}).start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_ENDPOINT", server.url)
        patch.setenv("HF_HUB_OFFLINE", "0")
        patch.setenv("HF_HUB_DISABLE_XET", "1")
        patch.delenv("HF_TOKEN", raising=False)
        patch.setattr(constants, "ENDPOINT", server.url)
        patch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        patch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        patch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        patch.setattr(default_api, "endpoint", server.url)
        patch.setattr(transformers_hub, "_hf_api", None)
        yield server
    server.stop()
    server.assert_healthy()


@pytest.fixture
def api(hub) -> HfApi:
    return HfApi(endpoint=hub.url, token=TOKEN)
