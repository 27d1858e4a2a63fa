"""A sha256 of a safetensors file's tensor data, kept in the file's own metadata: written when the model is saved and
checked when it is loaded. safetensors checks the header, not the data, so a flipped byte inside a weight would load
in silence; the Hub keeps a sha256 of each large file for the same reason."""

import hashlib
import json
import os
import re
import tempfile

CHECKSUM_KEY = "tensor_data_sha256"
CHUNK_BYTES = 1 << 24
HEADER_ALIGNMENT = 8  # safetensors pads its JSON header with spaces to a multiple of 8 bytes


def read_header(file) -> tuple[dict, int]:
    """The JSON header of an open safetensors file and the offset of its tensor data (the file left there)."""
    header_size = int.from_bytes(file.read(8), "little")
    header = json.loads(file.read(header_size))
    return header, 8 + header_size


def encoded_header(header: dict) -> bytes:
    """The header as safetensors lays it out: its size (8 bytes, little-endian), then the JSON, padded with spaces."""
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % HEADER_ALIGNMENT)
    return len(encoded).to_bytes(8, "little") + encoded


def record_checksum(path: str, unless_recorded: bool = False) -> None:
    """Write the sha256 of the tensor data of the safetensors file `path` into its metadata (`tensor_data_sha256`);
    with `unless_recorded`, leave a file that has one as it is. The file is rewritten beside itself (a temporary
    file of its own, removed on failure) and renamed into place, so a crash leaves the old file whole."""
    with open(path, "rb") as source:
        header, offset = read_header(source)
        if unless_recorded and CHECKSUM_KEY in (header.get("__metadata__") or {}):
            return
        header["__metadata__"] = {**(header.get("__metadata__") or {}), CHECKSUM_KEY: "0" * 64}
        placeholder = encoded_header(header)  # a digest has 64 hex digits: the real header has the same size
        digest = hashlib.sha256()
        descriptor, staged = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path) or ".")
        try:
            with os.fdopen(descriptor, "wb") as target:
                target.write(placeholder)
                while chunk := source.read(CHUNK_BYTES):
                    digest.update(chunk)
                    target.write(chunk)
                header["__metadata__"][CHECKSUM_KEY] = digest.hexdigest()
                target.seek(0)
                target.write(encoded_header(header))
            os.chmod(staged, os.stat(path).st_mode)
            os.replace(staged, path)
        except BaseException:
            os.unlink(staged)
            raise


def check_checksum(path: str) -> None:
    """Raise an `OSError` naming `path` when its tensor data no longer has the sha256 recorded at save. A file saved
    without one (by transformers itself, or before this check existed) is not checked."""
    with open(path, "rb") as file:
        header, _ = read_header(file)
        expected = (header.get("__metadata__") or {}).get(CHECKSUM_KEY)
        if expected is None:
            return
        digest = hashlib.sha256()
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise OSError(
            f"{path} is damaged: the sha256 of its tensor data is {digest.hexdigest()}, not the {expected} recorded "
            "when it was saved, so some weights changed on disk or in transfer. Download or copy it again, or load "
            "the checkpoint it came from."
        )


def saved_weight_files(folder: str, variant: str | None = None) -> list[str]:
    """The safetensors files of the model saved in `folder`: `model[.variant].safetensors`, or the shards its index
    lists; none when it holds neither (e.g. weights in PyTorch's format)."""
    name = f"model.{variant}.safetensors" if variant else "model.safetensors"
    index_name = f"model.safetensors.index.{variant}.json" if variant else "model.safetensors.index.json"
    single, index = os.path.join(folder, name), os.path.join(folder, index_name)
    if os.path.isfile(single):
        return [single]
    if not os.path.isfile(index):
        return []
    with open(index, encoding="utf-8") as f:
        shards = sorted(set(json.load(f).get("weight_map", {}).values()))
    return [os.path.join(folder, shard) for shard in shards if os.path.isfile(os.path.join(folder, shard))]


# The weight files a save writes, and their variant: model[.VARIANT][-00001-of-00002].safetensors and
# model.safetensors.index[.VARIANT].json (transformers' names).
WEIGHT_FILE = re.compile(r"model(?:\.(?P<variant>[^.]+?))?(?:-\d+-of-\d+)?\.safetensors")
WEIGHT_INDEX = re.compile(r"model\.safetensors\.index(?:\.(?P<variant>[^.]+))?\.json")


def weights_variant(name: str) -> tuple[bool, str | None]:
    """Whether `name` is a weights file (or index) of a save, and of which variant (None: the default)."""
    match = WEIGHT_FILE.fullmatch(name) or WEIGHT_INDEX.fullmatch(name)
    return (match is not None, match.group("variant") if match else None)


def stale_weight_files(folder: str, written: set[str]) -> list[str]:
    """The weight files in `folder` that a save which wrote the files named `written` into it leaves from an
    earlier save of the same variant (none for a folder that does not exist yet): shards of an earlier sharded save,
    or the single file of an unsharded one.
    transformers removes those when it saves into the folder itself; a staged save must do it."""
    if not os.path.isdir(folder):
        return []
    variants = {variant for is_weights, variant in map(weights_variant, written) if is_weights}
    return sorted(
        os.path.join(folder, name)
        for name in set(os.listdir(folder)) - written
        if weights_variant(name) in {(True, variant) for variant in variants}
    )
