"""A small Hugging Face Hub-compatible HTTP server (standard library only) for tests.

The real `huggingface_hub` client code paths (create_repo, upload_folder, upload_file, snapshot_download,
hf_hub_download, model_info, list_repo_files, branches and revisions) run against it on 127.0.0.1 with no internet.
It speaks the endpoints huggingface_hub 2.x calls, with the status codes and `X-Error-Code` headers the client maps
to its exception classes. Xet is not implemented: clients must run with `HF_HUB_DISABLE_XET=1`.

Usage:

    with HubServer(tokens={"hf_token": "user"}) as hub:
        ...  # point HF_ENDPOINT (or huggingface_hub.constants.ENDPOINT) at hub.url
    hub.assert_healthy()

In the tests, the `hub` fixture of conftest.py runs one per test module, with this process's `huggingface_hub`
pointed at it (and `api`, a client holding the write token of `conftest.USER`).
"""

import base64
import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

# URL prefixes of repo types, as in huggingface_hub.constants.REPO_TYPES_URL_PREFIXES.
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
# Files stored with LFS, as in the .gitattributes the Hub writes into every new repo.
LFS_PATTERNS = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.h5",
    "*.msgpack",
    "*.onnx",
    "*.pkl",
    "*.npy",
    "*.npz",
    "*.zip",
    "*.gz",
    "*.tar",
    "*.parquet",
    "*.arrow",
    "*.model",
)
LFS_MIN_SIZE = 10 * 1024 * 1024  # larger files always go to LFS, like on the Hub
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS).encode()
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


class HubError(Exception):
    """An error answer: HTTP status, message and the `X-Error-Code` the client turns into an exception class."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        body: dict | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.body = body or {}


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob, which the Hub reports as `oid` / `blobId` and uses as ETag of regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def now_iso() -> str:
    """A timestamp in the one format `huggingface_hub.utils.parse_datetime` reads."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class FileEntry:
    """A file of a commit: its content address in the object store and how git would store it."""

    sha256: str
    size: int
    lfs: bool
    git_oid: str  # git blob id of the content (regular file) or of the LFS pointer (LFS file)

    def tree_json(self, path: str) -> dict:
        entry = {"type": "file", "oid": self.git_oid, "size": self.size, "path": path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return entry

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))

    def remote_oid(self) -> str:
        """The oid preupload reports, compared by the client with its own to skip unchanged files."""
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class Commit:
    sha: str
    parent: str | None
    files: dict[str, FileEntry]
    title: str
    message: str
    author: str
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    owner: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit sha (also "refs/pr/N")
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    num_pull_requests: int = 0

    def resolve(self, revision: str) -> Commit:
        """A branch, tag or full commit sha -> its commit; `RevisionNotFound` otherwise."""
        sha = self.branches.get(revision) or self.tags.get(revision) or revision
        if sha not in self.commits:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.commits[sha]


class HubState:
    """Repos, commits and the content-addressed object store (files in `root/objects`), shared by handler threads."""

    def __init__(self, root: str, tokens: dict[str, str]):
        self.root = root
        self.tokens = tokens
        self.repos: dict[tuple[str, str], Repo] = {}
        self.pending_uploads: dict[str, int] = {}  # LFS oid -> size, announced by a batch call
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every request, for tests
        self.errors: list[str] = []  # tracebacks of requests that failed inside the server (answered 500)
        self.lock = threading.RLock()
        os.makedirs(os.path.join(root, "objects"), exist_ok=True)

    # ------------------------------------------------------------------------------------------ objects

    def object_path(self, sha256: str) -> str:
        return os.path.join(self.root, "objects", sha256[:2], sha256)

    def has_object(self, sha256: str, size: int | None = None) -> bool:
        path = self.object_path(sha256)
        return os.path.isfile(path) and (size is None or os.path.getsize(path) == size)

    def put_object(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.object_path(sha256)
        if not os.path.isfile(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{threading.get_ident()}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return sha256

    def read_object(self, sha256: str) -> bytes:
        with open(self.object_path(sha256), "rb") as f:
            return f.read()

    def regular_entry(self, data: bytes) -> FileEntry:
        return FileEntry(sha256=self.put_object(data), size=len(data), lfs=False, git_oid=git_blob_oid(data))

    def lfs_entry(self, sha256: str, size: int) -> FileEntry:
        return FileEntry(sha256=sha256, size=size, lfs=True, git_oid=git_blob_oid(lfs_pointer(sha256, size)))

    # ------------------------------------------------------------------------------------------ auth, repos

    def user_for(self, authorization: str | None) -> str | None:
        """The user a `Bearer` token belongs to; a token that is sent but unknown is a 401, as on the Hub."""
        if not authorization:
            return None
        token = authorization.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise HubError(401, INVALID_CREDENTIALS)
        return self.tokens[token]

    def require_writer(self, user: str | None, namespace: str) -> str:
        if user is None:
            raise HubError(401, "You must be authenticated to write to the Hub: pass a token with write access.")
        if user != namespace:
            raise HubError(403, f"You don't have the rights to write to the namespace {namespace!r}.")
        return user

    def get_repo(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user != repo.owner):
            raise HubError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
        return repo

    def create_repo(self, repo_type: str, repo_id: str, user: str, private: bool) -> tuple[Repo, bool]:
        """Create a repo with an initial commit holding `.gitattributes`; returns (repo, created)."""
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                return self.repos[(repo_type, repo_id)], False
            repo = Repo(repo_type=repo_type, repo_id=repo_id, owner=user, private=private, created_at=now_iso())
            self.repos[(repo_type, repo_id)] = repo
            self.add_commit(
                repo, "main", None, {".gitattributes": self.regular_entry(GITATTRIBUTES)}, user, "initial commit"
            )
            return repo, True

    def add_commit(
        self,
        repo: Repo,
        branch: str,
        parent: str | None,
        files: dict[str, FileEntry],
        user: str,
        title: str,
        message="",
    ) -> Commit:
        listing = sorted((path, entry.git_oid) for path, entry in files.items())
        seed = json.dumps([repo.repo_id, parent, listing, title, message, time.time_ns(), len(repo.commits)])
        sha = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(sha, parent, dict(files), title, message, user, now_iso())
        repo.commits[sha] = commit
        repo.branches[branch] = sha
        return commit


def tree_listing(files: dict[str, FileEntry], path: str, recursive: bool) -> list[dict]:
    """Entries of the folder `path` (the root for ""), like `GET /api/{type}s/{repo}/tree/{rev}/{path}`."""
    prefix = path.strip("/") + "/" if path.strip("/") else ""
    folders: dict[str, list[str]] = {}
    entries = []
    for file_path in sorted(files):
        if not file_path.startswith(prefix):
            continue
        parts = file_path[len(prefix) :].split("/")
        depth = len(parts) - 1 if recursive else min(len(parts) - 1, 1)
        for i in range(1, depth + 1):
            folders.setdefault(prefix + "/".join(parts[:i]), []).append(files[file_path].git_oid)
        if recursive or len(parts) == 1:
            entries.append(files[file_path].tree_json(file_path))
    if prefix and not entries and not folders:
        raise HubError(404, f"{path} does not exist", "EntryNotFound")
    folder_entries = [
        {"type": "directory", "oid": hashlib.sha1("".join(oids).encode()).hexdigest(), "path": folder}
        for folder, oids in sorted(folders.items())
    ]
    return folder_entries + entries


class HubRequestHandler(BaseHTTPRequestHandler):
    """Routes Hub API, LFS and `resolve` requests to `self.server.hub` (a `HubState`)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every answer carries a Content-Length
    timeout = 30
    server: "ThreadingHTTPServer"

    def log_message(self, format: str, *args) -> None:
        pass  # tests read `HubServer.requests` instead of stderr

    @property
    def hub(self) -> HubState:
        return self.server.hub  # type: ignore[attr-defined]

    @property
    def base_url(self) -> str:
        return f"http://{self.headers.get('Host')}"

    def do_GET(self) -> None:
        self.handle_any("GET")

    def do_HEAD(self) -> None:
        self.handle_any("HEAD")

    def do_POST(self) -> None:
        self.handle_any("POST")

    def do_PUT(self) -> None:
        self.handle_any("PUT")

    def do_DELETE(self) -> None:
        self.handle_any("DELETE")

    # ------------------------------------------------------------------------------------------ plumbing

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers, then the blank line
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, length: int | None = None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.hub.requests.append((self.command, self.path, status))

    def send_json(self, data, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def handle_any(self, method: str) -> None:
        body = self.read_body() if method in ("POST", "PUT", "DELETE") else b""
        try:
            self.route(method, body)
        except HubError as error:
            headers = {"X-Error-Message": error.message, **error.headers}
            if error.code:
                headers["X-Error-Code"] = error.code
            self.send_json({"error": error.message, **error.body}, error.status, headers)
        except Exception:  # a bug of this server: answer 500 (not a dropped connection) and keep the traceback
            self.hub.errors.append(traceback.format_exc())
            self.send_json({"error": "Internal error of the test Hub server"}, 500)

    def json_body(self, body: bytes) -> dict:
        try:
            return json.loads(body or b"{}")
        except json.JSONDecodeError:
            raise HubError(400, "The request body is not valid JSON.") from None

    # ------------------------------------------------------------------------------------------ routing

    def route(self, method: str, body: bytes) -> None:
        url = urlsplit(self.path)
        # Split before unquoting: revisions are sent quoted with safe="" ("refs%2Fpr%2F1" is one segment).
        parts = [unquote(part) for part in url.path.split("/")[1:]]
        query = parse_qs(url.query)
        user = self.hub.user_for(self.headers.get("Authorization"))
        if parts[:1] == ["api"]:
            return self.route_api(method, parts[1:], query, body, user)
        if method == "PUT" and len(parts) == 2 and parts[0] == "lfs-upload":
            return self.lfs_upload(parts[1], body)
        repo_type = "model"
        if parts[:1] in (["datasets"], ["spaces"]):
            repo_type, parts = API_TYPES[parts[0]], parts[1:]
        if len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
            if method == "POST":
                return self.lfs_batch(repo_type, f"{parts[0]}/{parts[1].removesuffix('.git')}", body, user)
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self.resolve(repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), user)
        raise HubError(501, f"{method} {url.path} is not implemented by the test Hub server.")

    def route_api(self, method: str, parts: list[str], query: dict, body: bytes, user: str | None) -> None:
        if parts == ["whoami-v2"] and method == "GET":
            if user is None:
                raise HubError(401, INVALID_CREDENTIALS)
            return self.send_json({"type": "user", "name": user, "fullname": user, "orgs": [], "auth": {}})
        if parts == ["agent-harnesses"]:
            return self.send_json({"standardEnvVars": [], "harnesses": {}})
        if parts[:1] == ["telemetry"]:
            return self.send_json({})
        if parts == ["validate-yaml"] and method == "POST":
            return self.send_json({"errors": [], "warnings": []})
        if parts == ["lfs-verify"] and method == "POST":
            payload = self.json_body(body)
            if not self.hub.has_object(payload.get("oid", ""), payload.get("size")):
                raise HubError(404, f"LFS object {payload.get('oid')} was not uploaded.")
            return self.send_json({})
        if parts == ["repos", "create"] and method == "POST":
            return self.create_repo(self.json_body(body), user)
        if parts == ["repos", "delete"] and method == "DELETE":
            return self.delete_repo(self.json_body(body), user)
        if len(parts) < 3 or parts[0] not in API_TYPES:
            raise HubError(501, f"{method} /api/{'/'.join(parts)} is not implemented by the test Hub server.")
        repo_type, repo_id, rest = API_TYPES[parts[0]], f"{parts[1]}/{parts[2]}", parts[3:]
        with self.hub.lock:
            repo = self.hub.get_repo(repo_type, repo_id, user)
            if method == "GET" and (rest == [] or (len(rest) == 2 and rest[0] == "revision")):
                return self.repo_info(repo, rest[1] if rest else "main", query)
            if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                recursive = query.get("recursive", ["False"])[0].lower() == "true"
                return self.send_json(tree_listing(repo.resolve(rest[1]).files, "/".join(rest[2:]), recursive))
            if method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
                return self.paths_info(repo.resolve(rest[1]), parse_qs(body.decode()).get("paths", []))
            if method == "GET" and rest == ["refs"]:
                return self.refs(repo, include_prs=bool(query.get("include_prs")))
            if method == "GET" and len(rest) == 2 and rest[0] == "commits":
                return self.commits(repo, rest[1])
            self.hub.require_writer(user, repo.owner)
            if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                revision = "main" if query.get("create_pr") else rest[1]
                return self.preupload(repo.resolve(revision), self.json_body(body))
            if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                return self.commit(repo, rest[1], body, user, create_pr=bool(query.get("create_pr")))
            if len(rest) == 2 and rest[0] == "branch" and method in ("POST", "DELETE"):
                return self.branch(repo, rest[1], method, self.json_body(body))
            if len(rest) == 2 and rest[0] == "tag" and method == "POST":
                return self.tag(repo, rest[1], self.json_body(body))
        raise HubError(501, f"{method} /api/{'/'.join(parts)} is not implemented by the test Hub server.")

    # ------------------------------------------------------------------------------------------ repos

    def repo_url(self, repo: Repo) -> str:
        return f"{self.base_url}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    def create_repo(self, payload: dict, user: str | None) -> None:
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type {repo_type!r}.")
        namespace = payload.get("organization") or user
        self.hub.require_writer(user, namespace or "")
        private = payload.get("private") or payload.get("visibility") == "private"
        repo, created = self.hub.create_repo(repo_type, f"{namespace}/{payload['name']}", user, bool(private))
        url = self.repo_url(repo)
        if not created:
            raise HubError(409, f"You already created this {repo_type} repo", body={"url": url})
        self.send_json({"url": url, "name": repo.repo_id, "id": repo.repo_id})

    def delete_repo(self, payload: dict, user: str | None) -> None:
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or user
        with self.hub.lock:
            repo = self.hub.get_repo(repo_type, f"{namespace}/{payload['name']}", user)
            self.hub.require_writer(user, repo.owner)
            del self.hub.repos[(repo_type, repo.repo_id)]
        self.send_json({})

    def repo_info(self, repo: Repo, revision: str, query: dict) -> None:
        commit = repo.resolve(revision)
        with_blobs = bool(query.get("blobs"))
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if with_blobs:
                sibling |= {"size": entry.size, "blobId": entry.git_oid}
                if entry.lfs:
                    sibling["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": entry.pointer_size}
            siblings.append(sibling)
        self.send_json(
            {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": repo.owner,
                "sha": commit.sha,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            }
        )

    def paths_info(self, commit: Commit, paths: list[str]) -> None:
        found = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                found.append(commit.files[path].tree_json(path))
            elif any(name.startswith(path + "/") for name in commit.files):
                found.append({"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "path": path})
        self.send_json(found)

    def refs(self, repo: Repo, include_prs: bool) -> None:
        def ref(name: str, kind: str, sha: str) -> dict:
            return {
                "name": name,
                "ref": name if name.startswith("refs/") else f"refs/{kind}/{name}",
                "targetCommit": sha,
            }

        branches = {name: sha for name, sha in repo.branches.items() if not name.startswith("refs/pr/")}
        prs = {name: sha for name, sha in repo.branches.items() if name.startswith("refs/pr/")}
        data = {
            "branches": [ref(name, "heads", sha) for name, sha in branches.items()],
            "tags": [ref(name, "tags", sha) for name, sha in repo.tags.items()],
            "converts": [],
        }
        if include_prs:
            data["pullRequests"] = [ref(name, "pr", sha) for name, sha in prs.items()]
        self.send_json(data)

    def commits(self, repo: Repo, revision: str) -> None:
        history, commit = [], repo.resolve(revision)
        while commit is not None:
            history.append(
                {
                    "id": commit.sha,
                    "title": commit.title,
                    "message": commit.message,
                    "authors": [{"user": commit.author}],
                    "date": commit.date,
                }
            )
            commit = repo.commits.get(commit.parent) if commit.parent else None
        self.send_json(history)

    def branch(self, repo: Repo, name: str, method: str, payload: dict) -> None:
        if method == "DELETE":
            if name not in repo.branches:
                raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
            if name == "main":
                raise HubError(403, "The main branch cannot be deleted.")
            del repo.branches[name]
            return self.send_json({})
        if name in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{name}")
        repo.branches[name] = repo.resolve(payload.get("startingPoint") or "main").sha
        self.send_json({})

    def tag(self, repo: Repo, revision: str, payload: dict) -> None:
        if payload["tag"] in repo.tags:
            raise HubError(409, f"Tag already exists: {payload['tag']}")
        repo.tags[payload["tag"]] = repo.resolve(revision).sha
        self.send_json({})

    # ------------------------------------------------------------------------------------------ uploads

    def preupload(self, commit: Commit, payload: dict) -> None:
        """Tell the client which files go to LFS (by name, size or binary content) and the oid of existing ones,
        which it compares with its own to skip unchanged files."""
        files = []
        for info in payload.get("files", []):
            path, size = info["path"], info["size"]
            sample = base64.b64decode(info.get("sample", ""))
            lfs = size >= LFS_MIN_SIZE or b"\0" in sample
            lfs = lfs or any(fnmatch.fnmatch(os.path.basename(path), pattern) for pattern in LFS_PATTERNS)
            existing = commit.files.get(path)
            files.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": existing.remote_oid() if existing else None,
                }
            )
        self.send_json({"files": files, "commitOid": commit.sha})

    def lfs_batch(self, repo_type: str, repo_id: str, body: bytes, user: str | None) -> None:
        with self.hub.lock:
            repo = self.hub.get_repo(repo_type, repo_id, user)
            self.hub.require_writer(user, repo.owner)
        payload = self.json_body(body)
        if payload.get("operation") != "upload":
            raise HubError(400, "The test Hub server only implements LFS uploads.")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], obj["size"]
            if self.hub.has_object(oid, size):
                objects.append({"oid": oid, "size": size})  # no actions: already uploaded
                continue
            with self.hub.lock:
                self.hub.pending_uploads[oid] = size
            actions = {
                "upload": {"href": f"{self.base_url}/lfs-upload/{oid}"},
                "verify": {"href": f"{self.base_url}/api/lfs-verify"},
            }
            objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
        self.send_json(
            {"transfer": "basic", "objects": objects}, headers={"Content-Type": "application/vnd.git-lfs+json"}
        )

    def lfs_upload(self, oid: str, body: bytes) -> None:
        """The object PUT of the basic LFS transfer; only oids announced by a batch call are accepted."""
        with self.hub.lock:
            size = self.hub.pending_uploads.get(oid)
        if size is None:
            raise HubError(403, f"No upload of LFS object {oid} was requested.")
        if len(body) != size or hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"LFS object {oid}: content does not match its sha256 and size.")
        self.hub.put_object(body)
        with self.hub.lock:
            self.hub.pending_uploads.pop(oid, None)
        self.send(200)

    def commit(self, repo: Repo, revision: str, body: bytes, user: str, create_pr: bool) -> None:
        """Apply an NDJSON commit (header, file, lfsFile, deletedFile, deletedFolder) on a branch, or on a new
        `refs/pr/N` branch for `create_pr`."""
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "A commit starts with a header line.")
        header = lines[0]["value"]
        if create_pr:
            base = repo.resolve(revision)
            repo.num_pull_requests += 1
            branch = f"refs/pr/{repo.num_pull_requests}"
        elif revision in repo.branches:
            branch, base = revision, repo.resolve(revision)
        elif revision in repo.tags or revision in repo.commits:
            raise HubError(400, f"Cannot commit to {revision}: it is not a branch.")
        else:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        if header.get("parentCommit") and header["parentCommit"] != base.sha:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(base.files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"].strip("/")
            if key == "file":
                files[path] = self.hub.regular_entry(base64.b64decode(value["content"]))
            elif key == "lfsFile":
                size = value.get("size")
                if not self.hub.has_object(value["oid"], size):
                    raise HubError(422, f"LFS object {value['oid']} of {path} was not uploaded.")
                files[path] = self.hub.lfs_entry(
                    value["oid"], size or os.path.getsize(self.hub.object_path(value["oid"]))
                )
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                inside = [name for name in files if name.startswith(path + "/")]
                if not inside:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for name in inside:
                    del files[name]
            else:
                raise HubError(400, f"Unknown commit operation {key!r}.")
        commit = self.hub.add_commit(
            repo, branch, base.sha, files, user, header.get("summary") or "", header.get("description") or ""
        )
        data = {"commitUrl": f"{self.repo_url(repo)}/commit/{commit.sha}", "commitOid": commit.sha, "success": True}
        data["pullRequestUrl"] = f"{self.repo_url(repo)}/discussions/{repo.num_pull_requests}" if create_pr else None
        self.send_json(data)

    # ------------------------------------------------------------------------------------------ downloads

    def resolve(self, repo_type: str, repo_id: str, revision: str, path: str, user: str | None) -> None:
        """Serve a file with the headers `hf_hub_download` relies on (ETag, X-Repo-Commit, Content-Length) and
        byte ranges, which it uses to resume downloads."""
        with self.hub.lock:
            commit = self.hub.get_repo(repo_type, repo_id, user).resolve(revision)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        headers = {
            "ETag": f'"{entry.git_oid}"',
            "X-Repo-Commit": commit.sha,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry.lfs:
            headers |= {"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)}
        if self.command == "HEAD":
            return self.send(200, headers=headers, length=entry.size)
        data = self.hub.read_object(entry.sha256)
        byte_range = self.headers.get("Range")
        if byte_range is None:
            return self.send(200, data, headers)
        start, end = parse_range(byte_range, len(data))
        if start > end:
            raise HubError(
                416, f"Range {byte_range} is not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"}
            )
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self.send(206, data[start : end + 1], headers)


def parse_range(header: str, size: int) -> tuple[int, int]:
    """`bytes=START-`, `bytes=START-END` or `bytes=-SUFFIX` -> inclusive (start, end); start > end if unsatisfiable."""
    first, last = header.removeprefix("bytes=").split(",")[0].strip().split("-")
    if not first:
        return max(size - int(last), 0), size - 1
    return int(first), min(int(last), size - 1) if last else size - 1


class HubServer:
    """The server on 127.0.0.1 (a free port), run in a daemon thread; repos live in a temp folder.

    Args:
        tokens: Access tokens and the user each belongs to; a user may write only to its own namespace.
        root: Folder for the object store (a fresh temp folder, removed on `stop`, by default).
    """

    def __init__(self, tokens: dict[str, str] | None = None, root: str | None = None):
        self.own_root = root is None
        self.root = root or tempfile.mkdtemp(prefix="test-hub-")
        self.hub = HubState(self.root, dict(tokens or {"hf_test_token": "user"}))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), HubRequestHandler)
        self.httpd.daemon_threads = True
        self.httpd.hub = self.hub  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        return self.hub.requests

    @property
    def errors(self) -> list[str]:
        return self.hub.errors

    def assert_healthy(self) -> None:
        """Fail if a client called an endpoint the server does not implement (501) or the server itself failed: a
        test that passes against such a server tested less than it says."""
        unimplemented = [(method, path) for method, path, status in self.requests if status == 501]
        assert not unimplemented, f"the client called endpoints the test Hub does not implement: {unimplemented}"
        assert not self.errors, "the test Hub server failed:\n" + "\n".join(self.errors)

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo | None:
        return self.hub.repos.get((repo_type, repo_id))

    def start(self) -> "HubServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
