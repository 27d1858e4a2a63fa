"""Saving, loading and pushing CodeFusion pipelines: file checks that name the broken file, model cards written with
every save and push, and uploads of a saved folder as it is."""

import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, get_type_hints

import httpx2  # huggingface_hub's HTTP client: its transport errors mean the Hub endpoint could not be reached
from diffusers.utils import logging
from huggingface_hub import CommitInfo, constants, create_repo, hf_hub_download, snapshot_download, upload_folder
from huggingface_hub.dataclasses import type_validator
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from safetensors import safe_open

from .modelcard_codefusion import create_model_card, save_model_card
from .tokenization_codefusion import vocabulary_sha256
from .weights_checksum_codefusion import stale_weight_files

logger = logging.get_logger(__name__)

# The prefix of `staged_save`'s staging folder inside the folder being saved to.
STAGING_PREFIX = ".staged-save-"
# Files each saved component cannot load without; checked before loading so errors name the file.
REQUIRED_FILES = {
    "model": ("config.json", ("model.safetensors", "model.safetensors.index.json")),
    "scheduler": ("scheduler_config.json",),
    "tokenizer": ("tokenizer_config.json", "tokenizer.json"),
    "prompt_tokenizer": ("tokenizer_config.json", "tokenizer.json"),
    # The index files of its mode are checked by CodeFusionRetriever.from_pretrained, which reads the mode here.
    "retriever": ("retriever_config.json", "corpus/state.json"),
}
# The types transformers expects of the tokenizer_config.json keys it reads: it has no schema to check them against,
# and a wrong one loads silently (model_max_length "128") or fails deep inside.
TOKENIZER_CONFIG_TYPES: dict[str, Any] = {
    "model_max_length": int,
    "padding_side": str,
    "truncation_side": str,
    "clean_up_tokenization_spaces": bool,
    "tokenizer_class": str,
    "backend": str,
    "model_input_names": list[str],
    "added_tokens_decoder": dict,
} | {f"{name}_token": str | dict | None for name in ("bos", "eos", "unk", "sep", "pad", "cls", "mask")}


class CodeFusionPipelineHubMixin:
    """`from_pretrained`, `save_pretrained` and `push_to_hub` of [`CodeFusionPipeline`] (mixed in before diffusers'
    `DiffusionPipeline`): Hub repo ids resolved by download, folders checked file by file, a model card with every
    save and push."""

    def __setattr__(self, name: str, value: Any) -> None:
        # diffusers records a component assigned after construction in model_index.json only when the pipeline had
        # one before: an optional component given to a pipeline built without it (`pipe.retriever = retriever`)
        # would not be saved.
        super().__setattr__(name, value)
        if value is not None and name in self._optional_components and self.config.get(name, (None,))[0] is None:
            self.register_modules(**{name: value})

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs
    ) -> "CodeFusionPipelineHubMixin":
        """Load from a local folder or a Hub repo id (`revision=`, `token=`, `cache_dir=` are passed to the download).

        A repo id is downloaded with `huggingface_hub.snapshot_download` first: diffusers cannot resolve a custom
        pipeline class by repo id. Missing or unreadable files raise an `OSError` naming the file (and the repo id
        and revision, for a download: the snapshot folder alone does not say which repo it came from).
        """
        path = str(pretrained_model_name_or_path)
        if os.path.isdir(path):
            check_pipeline_folder(path, cls, kwargs.get("variant"))
            return cls.load_folder(path, **kwargs)
        if path.startswith((".", "/", "~")) or path.count("/") > 1:
            raise OSError(f"{path} is not a folder, nor a Hub repo id (which looks like 'user/name').")
        download_kwargs = {key: kwargs.pop(key) for key in ("revision", "token", "cache_dir") if key in kwargs}
        try:
            folder = snapshot_download(path, **download_kwargs)
        except LocalEntryNotFoundError as error:  # offline, or the Hub unreachable, and not in the cache
            raise OSError(f"{path} is not a local folder, and as a Hub repo id it could not be downloaded: {error}")
        try:
            check_pipeline_folder(folder, cls, kwargs.get("variant"))
        except OSError as error:
            revision = download_kwargs.get("revision") or "main"
            raise OSError(
                f"Hub repo {path!r} (revision {revision!r}) is not a usable CodeFusion pipeline: {error}"
            ) from None
        return cls.load_folder(folder, **kwargs)

    @classmethod
    def load_folder(cls, folder: str, **kwargs) -> "CodeFusionPipelineHubMixin":
        """diffusers' load of a checked local folder; a component that does not fit the others (the pipeline's
        `__init__` checks, e.g. a tokenizer that is not the one saved with the model) raises a `ValueError` naming
        the folder."""
        try:
            return super().from_pretrained(folder, **kwargs)
        except ValueError as error:
            if str(error).startswith(folder):  # names its file already
                raise
            raise ValueError(f"{folder}: {error}") from error

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        model_card: bool | dict[str, Any] = True,
        push_to_hub: bool = False,
        **kwargs,
    ) -> None:
        """Save the pipeline and a model card, README.md, whose usage snippet loads `save_directory`. The files are
        written into a staging folder first and moved into place once all are complete (`staged_save`): a save cut
        short never leaves a folder that loads as a mix of two saves.

        Args:
            model_card: `True` for a card made from the pipeline alone; a dict of
                [`~codefusion_hf.modelcard_codefusion.create_model_card`] fields (`base_model`, `datasets`,
                `training_summary`, `eval_results_file`, `language`, `repo_id`, ...) to add what it cannot know;
                `False` for none. A README.md already in the folder that a person wrote (no "generated" note) is
                kept; generated ones are replaced, so the card follows the weights.
            push_to_hub: Push through [`push_to_hub`] afterwards (`repo_id`, `commit_message`, `private`, `token`
                and `create_pr` go there); diffusers' own push would replace the card with its generic one.
            kwargs: Passed to diffusers' `save_pretrained` (`safe_serialization`, `variant`, ...).
        """
        push_names = ("repo_id", "commit_message", "private", "token", "create_pr")
        push_kwargs = {name: kwargs.pop(name) for name in push_names if name in kwargs}
        # Built first: bad card input (a missing eval file) fails before anything is written.
        card = None if model_card is False else create_model_card(self, **card_fields(model_card, save_directory))
        self.model.config.code_vocabulary_sha256 = vocabulary_sha256(self.tokenizer)  # what loading checks
        with staged_save(str(save_directory)) as staging_dir:
            super().save_pretrained(staging_dir, **kwargs)
        if card is not None and not save_model_card(card, save_directory):
            logger.warning(f"Kept the README.md in {save_directory} (or the repo's): a person wrote it.")
        if push_to_hub:
            repo_id = push_kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            save_kwargs = {name: kwargs[name] for name in ("safe_serialization", "variant") if name in kwargs}
            self.push_to_hub(repo_id, model_card=model_card, **push_kwargs, **save_kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
        subfolder: str | None = None,
        *,
        model_card: bool | dict[str, Any] = True,
    ) -> CommitInfo:
        """Upload the pipeline with its model card (see [`save_pretrained`]), whose snippet loads `repo_id`.

        As with diffusers, a README.md already in the repo that a person wrote is kept; a generated one is replaced.
        """
        with reaching_the_hub(repo_id), tempfile.TemporaryDirectory() as folder:
            repo_id = create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
            if subfolder:
                model_card = False  # as diffusers: a pipeline pushed into a subfolder is not the repo's model
            if model_card is not False:
                model_card = card_fields(model_card, repo_id)
                try:  # the repo's current card: save_pretrained keeps it if a person wrote it
                    readme = hf_hub_download(repo_id, "README.md", token=token)
                    shutil.copyfile(readme, os.path.join(folder, "README.md"))
                except EntryNotFoundError:
                    pass
            self.save_pretrained(folder, model_card=model_card, safe_serialization=safe_serialization, variant=variant)
            with retriever_corpus_expected():
                return self._upload_folder(
                    folder,
                    repo_id,
                    token=token,
                    commit_message=commit_message,
                    create_pr=create_pr,
                    subfolder=subfolder,
                )


@contextmanager
def staged_save(folder: str) -> Iterator[str]:
    """A staging folder inside `folder` to save a pipeline into. Once the block ends without error, its files replace
    their namesakes in `folder` one by one, model_index.json removed first and put back last: a save cut short
    leaves a folder that does not load as a pipeline (no model_index.json) rather than one that mixes two saves.
    An earlier save's weight files of the variant saved go (as transformers removes them); the other files of
    `folder` the save does not write (Trainer checkpoints, another variant's weights) stay."""
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):  # left by a save that was killed
        if name.startswith(STAGING_PREFIX):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    staging_dir = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder)
    try:
        yield staging_dir
        index_file = os.path.join(folder, "model_index.json")
        if os.path.exists(index_file):
            os.remove(index_file)
        for root, _, files in os.walk(staging_dir):
            target_dir = os.path.join(folder, os.path.relpath(root, staging_dir))
            for stale in stale_weight_files(target_dir, set(files)):
                os.remove(stale)  # an earlier save's shards, which transformers removes only where it writes
            os.makedirs(target_dir, exist_ok=True)
            for name in files:
                if root != staging_dir or name != "model_index.json":
                    os.replace(os.path.join(root, name), os.path.join(target_dir, name))
        os.replace(os.path.join(staging_dir, "model_index.json"), index_file)
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)


def write_atomically(path: str, text: str) -> None:
    """Write `text` to `path` through a file beside it renamed into place: a reader, or a run killed meanwhile, sees
    the old file or the new one, never a part."""
    staged = f"{path}.tmp"
    try:
        with open(staged, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(staged, path)
    except BaseException:
        if os.path.exists(staged):
            os.remove(staged)
        raise


def card_fields(model_card: bool | dict[str, Any], repo_id: str | os.PathLike) -> dict[str, Any]:
    """The `create_model_card` fields of a `model_card=` argument; the snippet loads `repo_id` unless it says."""
    if model_card is True:
        return {"repo_id": str(repo_id)}
    if isinstance(model_card, dict):
        return {"repo_id": str(repo_id)} | model_card
    raise ValueError(f"model_card must be True, False or a dict of model card fields, got {model_card!r}.")


def variant_name(name: str, variant: str | None) -> str:
    """A weights file's name under `variant`, as transformers saves it: model.fp16.safetensors,
    model.safetensors.index.fp16.json."""
    if variant is None:
        return name
    stem, extension = name.rsplit(".", 1)
    return f"{stem}.{variant}.{extension}"


def check_pipeline_folder(path: str, pipeline_class: type, variant: str | None = None) -> None:
    """Fail early, naming the file, when a saved pipeline is not a `pipeline_class` pipeline (the class that loads it:
    [`CodeFusionPipeline`] or a subclass, whose own `__init__` says which components it takes) or a component is
    missing or unreadable (diffusers' own errors do not say which file broke). `variant` names the weights files to
    look for, as `save_pretrained(..., variant=)` wrote them."""
    index_file = os.path.join(path, "model_index.json")
    try:
        with open(index_file) as f:
            index = json.load(f)
    except FileNotFoundError:
        raise OSError(f"{index_file} is missing: {path} is not a saved diffusers pipeline.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise OSError(f"{index_file} is not valid JSON ({error}).") from None
    if not isinstance(index, dict):
        raise OSError(f"{index_file} must hold a JSON object, got a {type(index).__name__}.")
    if index.get("_class_name") != pipeline_class.__name__:
        raise OSError(f"{path} holds a {index.get('_class_name')!r} pipeline, not a {pipeline_class.__name__}.")
    component_classes = check_component_classes(index_file, index, pipeline_class)
    for component, required in REQUIRED_FILES.items():
        if component_classes.get(component) is None:
            continue  # an optional component saved as absent, or one `pipeline_class` does not take
        for alternatives in required:
            names = (alternatives,) if isinstance(alternatives, str) else alternatives
            if component == "model" and names != ("config.json",):
                names = tuple(variant_name(name, variant) for name in names)
            files = [os.path.join(path, component, name) for name in names]
            existing = next((f for f in files if os.path.isfile(f)), None)
            if existing is None and component == "model" and variant is not None:
                # diffusers' error for a variant no component was saved with, and its type: a ValueError
                raise ValueError(
                    f"You are trying to load the model files of the `variant={variant}`, but no such modeling files "
                    f"are available: {files[0]} is missing."
                    + (saved_variants_hint(os.path.join(path, component), variant) or unvariant_hint(files[0]))
                )
            if existing is None:
                raise OSError(
                    f"{files[0]} is missing: the {component!r} component cannot be loaded."
                    + saved_variants_hint(os.path.join(path, component), variant)
                )
            check_readable(existing)
            if existing.endswith(".json"):
                check_config_types(existing, component, component_classes[component])
            if os.path.basename(existing) == "tokenizer_config.json":
                check_special_tokens(existing)


def check_component_classes(index_file: str, index: dict[str, Any], pipeline_class: type) -> dict[str, type | None]:
    """The class model_index.json names for each component of `pipeline_class` (None for an optional one saved as
    absent), checked against the types its `__init__` takes: diffusers only warns about a wrong model class and does
    not check schedulers, so a DDPMScheduler would load and sample wrongly."""
    classes = {}
    for component, accepted in pipeline_class._get_signature_types().items():
        names = " or ".join(f"{t.__module__}.{t.__name__}" for t in accepted if t is not type(None))
        entry = index.get(component)
        if entry is None and component in pipeline_class._optional_components:
            entry = [None, None]  # saved before the pipeline had this optional component
        if not (isinstance(entry, list) and len(entry) == 2 and all(p is None or isinstance(p, str) for p in entry)):
            raise OSError(
                f"{index_file}: {component!r} must be a [library, class name] pair naming a {names}, got {entry!r}."
            )
        library, class_name = entry
        if library is None and class_name is None and type(None) in accepted:
            classes[component] = None
            continue
        # Only modules already imported: naming a module in a JSON file must not run its code (as in diffusers).
        class_obj = getattr(sys.modules.get(library or ""), class_name or "", None)
        if not (isinstance(class_obj, type) and issubclass(class_obj, accepted)):
            raise OSError(
                f"{index_file}: {component!r} is {entry!r}, which {pipeline_class.__name__} cannot run: it takes "
                f"a {names} (or a subclass). Set {component!r} to the class the component was saved with."
            )
        classes[component] = class_obj
    return classes


def check_config_types(config_file: str, component: str, class_obj: type) -> None:
    """Raise an `OSError` naming the file, the key and the expected type when a scheduler or tokenizer config holds
    a value of the wrong JSON type (`"num_train_timesteps": "1000"`), which would otherwise load silently or fail
    deep inside with `'<' not supported between 'str' and 'int'`. The model's config.json is checked by
    `CodeFusionConfig` itself; a scheduler's types are its `__init__`'s annotations."""
    with open(config_file) as f:
        config = json.load(f)
    if component == "scheduler":
        expected_types = get_type_hints(class_obj.__init__)
    elif os.path.basename(config_file) == "tokenizer_config.json":
        expected_types = TOKENIZER_CONFIG_TYPES
    else:
        return
    for key, value in config.items():
        if key not in expected_types:
            continue
        candidates = [value, float(value)] if type(value) is int else [value]  # JSON writes 3.0 as 3
        errors = []
        for candidate in candidates:
            try:
                type_validator(key, candidate, expected_types[key])
            except TypeError as error:
                errors.append(error)
        if len(errors) == len(candidates):
            raise OSError(f"{config_file}: {errors[0]}. Fix the value of {key!r}.")


SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def check_special_tokens(config_file: str) -> None:
    """Raise an `OSError` naming the file and the key when tokenizer_config.json names a special token
    (`"pad_token": "<nosuch>"`) that the vocabulary of the tokenizer.json beside it lacks: transformers would add it
    as a new token, and the pipeline would then refuse a tokenizer one token larger than the model's vocabulary."""
    tokenizer_file = os.path.join(os.path.dirname(config_file), "tokenizer.json")
    try:
        with open(tokenizer_file, encoding="utf-8") as f:
            tokenizer = json.load(f)
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return  # no tokenizer.json (a slow tokenizer), or unreadable: checked elsewhere
    vocab = (tokenizer.get("model") or {}).get("vocab") or {}
    known = set(vocab) if isinstance(vocab, dict) else {entry[0] for entry in vocab if isinstance(entry, list)}
    known |= {token.get("content") for token in tokenizer.get("added_tokens") or [] if isinstance(token, dict)}
    added = config.get("added_tokens_decoder")
    known |= {t.get("content") for t in added.values() if isinstance(t, dict)} if isinstance(added, dict) else set()
    for key in SPECIAL_TOKEN_KEYS:
        value = config.get(key)
        token = value.get("content") if isinstance(value, dict) else value
        if isinstance(token, str) and token not in known:
            raise OSError(
                f"{config_file}: {key!r} is {token!r}, which is not a token of {tokenizer_file}. Set {key!r} to one "
                "of its tokens (the one the model was trained with), or remove the key."
            )


def saved_variants_hint(folder: str, variant: str | None) -> str:
    """What to pass instead, when the folder holds weights of other variants than the one asked for."""
    if not os.path.isdir(folder):
        return ""
    saved = sorted(
        {name.split(".")[1] for name in os.listdir(folder) if name.startswith("model.") and name.count(".") == 2}
        - {"safetensors"}
    )
    if not saved:
        return ""
    asked = "without a variant" if variant is None else f"as variant={variant!r}"
    return f" It was saved with variant={saved[0]!r}, not {asked}: pass variant={saved[0]!r}."


def unvariant_hint(variant_file: str) -> str:
    """What to pass instead, when a variant was asked for but the weights were saved without one."""
    folder, name = os.path.split(variant_file)
    plain = ".".join(name.split(".")[::2])  # model.fp16.safetensors -> model.safetensors
    if not os.path.isfile(os.path.join(folder, plain)):
        return ""
    return f" It was saved without a variant ({plain}): pass no variant."


def upload_pipeline_folder(
    folder: str,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload CodeFusion pipeline",
    *,
    pipeline_class: type | None = None,
) -> CommitInfo:
    """Upload a saved pipeline folder as it is, model card included (`push_to_hub` would re-save the pipeline and
    rebuild a card from the pipeline alone, losing what the saver knew), after checking it loads as `pipeline_class`
    ([`CodeFusionPipeline`] or a subclass; default: the class of this package its model_index.json names). Trainer
    checkpoints are left out."""
    check_pipeline_folder(folder, pipeline_class or named_pipeline_class(folder))
    with reaching_the_hub(repo_id), retriever_corpus_expected():
        repo_id = create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        return upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            token=token,
            commit_message=commit_message,
            ignore_patterns=["checkpoint-*", "checkpoint-*/**", f"{STAGING_PREFIX}*", f"{STAGING_PREFIX}*/**"],
        )


def named_pipeline_class(folder: str) -> type:
    """The pipeline class of this package that `folder`'s model_index.json names, looked up by name as diffusers'
    loader does (so that this module imports no pipeline)."""
    package = sys.modules[__package__]
    index_file = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index_file):
        raise OSError(f"{folder} has no model_index.json: it is not a saved pipeline folder.")
    check_readable(index_file)
    with open(index_file) as f:
        name = json.load(f).get("_class_name")
    if name not in package.__all__ or not name.endswith("Pipeline"):
        raise OSError(f"{index_file} names the pipeline class {name!r}, which is not one of codefusion_hf's.")
    return getattr(package, name)


@contextmanager
def retriever_corpus_expected() -> Iterator[None]:
    """The retriever's corpus (retriever/corpus/*.arrow) belongs in the pipeline's model repo: no warning that a data
    file is being committed to a model repository."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"It seems that you are about to commit a data file \(retriever/")
        yield


@contextmanager
def reaching_the_hub(repo_id: str) -> Iterator[None]:
    """A push that cannot reach the Hub (no network, a wrong `HF_ENDPOINT`) fails with an `OSError` naming the
    endpoint, instead of the HTTP client's bare "Connection refused"."""
    try:
        yield
    except httpx2.TransportError as error:
        raise OSError(f"cannot reach the Hub at {constants.ENDPOINT} to push {repo_id} ({error}).") from None


def check_readable(path: str) -> None:
    """Raise an `OSError` naming `path` when a JSON or safetensors file does not parse, or a JSON file holds no
    object."""
    try:
        if path.endswith(".safetensors"):
            with safe_open(path, framework="pt"):
                pass
        else:
            with open(path) as f:
                content = json.load(f)
    except Exception as error:  # any parse failure means a corrupted file
        raise OSError(f"{path} is corrupted: {error}") from None
    if not path.endswith(".safetensors") and not isinstance(content, dict):
        raise OSError(f"{path} must hold a JSON object, got a {type(content).__name__}.")


__all__ = [
    "CodeFusionPipelineHubMixin",
    "check_pipeline_folder",
    "check_readable",
    "staged_save",
    "upload_pipeline_folder",
    "write_atomically",
]
