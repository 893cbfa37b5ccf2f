"""A small loopback Hugging Face Hub for tests: the part of the Hub HTTP API that `huggingface_hub` uses to create
a repo, commit files (regular and git-LFS) and download them again.

Why it exists: the test machines reach no Hub and no installable Hub server exists, so `textxfer push` is tested
against this one. It follows the real API as `huggingface_hub` (2.x, read from its sources) speaks it:

- `POST /api/repos/create`: 200 `{"url"}`; 409 for an existing repo, whose body still carries `url`
  (`create_repo(exist_ok=True)` reads it); 403 in a namespace the token may not write to; 404 for an unknown
  namespace.
- `GET /api/models/{repo}[/revision/{rev}]`, `GET .../tree/{rev}[/{path}]`, `GET .../refs`, `PUT .../settings`.
- `POST /api/models/{repo}/preupload/{rev}`: the *server* decides `regular` or `lfs` per file (LFS for the
  `.gitattributes` patterns, binary samples and files over `lfs_threshold` bytes) and returns the remote oid.
- The classic git-LFS batch API (`POST /{repo}.git/info/lfs/objects/batch`, then a PUT to a signed storage URL
  on another host name, then `verify`); tests set `HF_HUB_DISABLE_XET=1` so the client takes that path.
- `POST /api/models/{repo}/commit/{rev}` as NDJSON (`header`, `file` base64, `lfsFile`, `deletedFile`,
  `deletedFolder`), `POST .../branch/{branch}`, `POST /api/validate-yaml`, `GET /api/whoami-v2`.
- Downloads: `HEAD`/`GET /{repo}/resolve/{rev}/{path}` with `ETag`, `X-Repo-Commit` and `Content-Length`;
  LFS files answer 302 to a "CDN" URL on another host name with `X-Linked-Etag` / `X-Linked-Size`, as the
  real Hub does, so the client drops the Authorization header there.
- Auth: `Authorization: Bearer <token>`; an unknown token is a 401 everywhere, writing without a token is a
  401, writing to someone else's repo a 403, a missing (or private and hidden) repo a 404 `RepoNotFound`.

Everything received is kept in `HubServer.state` so tests can check the commits and bytes that arrived.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

# The .gitattributes the Hub writes into every new model repo (abridged); its patterns decide LFS uploads.
DEFAULT_GITATTRIBUTES = """\
*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.msgpack filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.tar filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*tfevents* filter=lfs diff=lfs merge=lfs -text
"""
LFS_PATTERNS = [line.split()[0] for line in DEFAULT_GITATTRIBUTES.splitlines() if line.strip()]
KNOWN_PIPELINE_TAGS = {
    "text-classification", "token-classification", "image-classification", "fill-mask", "feature-extraction",
    "zero-shot-classification", "question-answering", "text-generation", "sentence-similarity",
}
NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")


def git_blob_oid(content: bytes) -> str:
    """git's object id of a blob: what the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class Blob:
    """One file at one commit: the bytes, and whether git stores it as an LFS pointer."""

    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def oid(self) -> str:
        """The git oid (of the pointer file for LFS blobs), as `tree` and `ETag` report it."""
        return git_blob_oid(lfs_pointer(self.sha256, len(self.content)) if self.lfs else self.content)


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    description: str
    author: str
    date: str
    files: dict[str, Blob]
    operations: list[dict] = field(default_factory=list)
    """What the client sent: [{"key", "path", "size"}] per NDJSON line (for the tests)."""


@dataclass
class Repo:
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        if oid in self.commits:
            return self.commits[oid]
        matches = [c for o, c in self.commits.items() if len(revision) >= 7 and o.startswith(revision)]
        return matches[0] if len(matches) == 1 else None

    def history(self, branch: str = "main") -> list[Commit]:
        """Commits of `branch`, newest first."""
        out, oid = [], self.branches.get(branch)
        while oid is not None:
            out.append(self.commits[oid])
            oid = self.commits[oid].parent
        return out


@dataclass
class HubState:
    tokens: dict[str, str] = field(default_factory=dict)
    """token -> user name"""
    orgs: dict[str, set[str]] = field(default_factory=dict)
    """organisation -> member user names"""
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    """(method, path, status) of every request, in order."""
    lfs_threshold: int = 10 * 1000 * 1000
    secret: bytes = b"loopback-signing-key"


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.extra, self.headers = extra or {}, headers or {}


class HubServer:
    """Runs the loopback Hub in a daemon thread on 127.0.0.1 (a free port); use as a context manager."""

    def __init__(self, tokens: dict[str, str] | None = None, orgs: dict[str, set[str]] | None = None,
                 lfs_threshold: int = 10 * 1000 * 1000):
        self.state = HubState(tokens=dict(tokens or {}), orgs={k: set(v) for k, v in (orgs or {}).items()},
                              lfs_threshold=lfs_threshold)
        self.lock = threading.RLock()
        self._counter = itertools.count(1)
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # LFS storage and the download CDN live on "another host", as S3 and the CDN do on the real Hub: the same
        # socket, reached by a different host name, so the client treats it as foreign (no auth header sent).
        self.storage_url = f"http://localhost:{self.port}"
        self._thread: threading.Thread | None = None

    def __enter__(self) -> HubServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------------ state helpers (also used by tests)

    def now(self) -> str:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        """Make a repo with the Hub's initial commit (a .gitattributes file)."""
        with self.lock:
            repo = Repo(repo_id=repo_id, private=private, created_at=self.now())
            blob = Blob(DEFAULT_GITATTRIBUTES.encode(), lfs=False)
            self._commit(repo, None, "main", "initial commit", "", repo.namespace, {".gitattributes": blob}, [])
            self.state.repos[repo_id] = repo
            return repo

    def _commit(self, repo: Repo, parent: str | None, branch: str, title: str, description: str, author: str,
                files: dict[str, Blob], operations: list[dict]) -> Commit:
        tree = sorted((p, b.oid) for p, b in files.items())
        payload = json.dumps([parent, tree, title, description, author, next(self._counter)]).encode()
        oid = hashlib.sha1(payload).hexdigest()
        commit = Commit(oid, parent, title, description, author, self.now(), dict(files), operations)
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit

    def sign(self, *parts: str) -> str:
        return hmac.new(self.state.secret, "/".join(parts).encode(), hashlib.sha256).hexdigest()[:32]

    def upload_mode(self, path: str, size: int, sample: bytes) -> str:
        """The server's choice, like the Hub's: LFS for .gitattributes patterns, binary content or big files."""
        name = path.rsplit("/", 1)[-1]
        if any(fnmatch.fnmatch(name, pattern) for pattern in LFS_PATTERNS):
            return "lfs"
        if size > self.state.lfs_threshold or b"\0" in sample:
            return "lfs"
        return "regular"


def _split_repo(path: str, prefix: str) -> tuple[str, str]:
    """'/api/models/ns/name/rest' -> ('ns/name', 'rest')."""
    parts = path[len(prefix):].split("/", 2)
    if len(parts) < 2:
        raise HttpError(404, "Not Found")
    return f"{parts[0]}/{parts[1]}", parts[2] if len(parts) > 2 else ""


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read hub.state.requests instead
        pass

    # ------------------------------------------------------------------ plumbing

    def _body(self) -> bytes:
        return self._raw_body

    def _read_body(self) -> bytes:
        """Read the whole request body first, so an early error never leaves bytes on a kept-alive socket."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        with self.hub.lock:
            self.hub.state.requests.append((self.command, self.path, status))

    def _json(self, status: int, data: Any, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _user(self) -> str | None:
        """The token's user; a token that is not known is a 401 on every route, as on the Hub."""
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        user = self.hub.state.tokens.get(token)
        if user is None:
            raise HttpError(401, "Invalid credentials in Authorization header",
                            headers={"X-Error-Message": "Invalid credentials in Authorization header"})
        return user

    def _can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.hub.state.orgs.get(namespace, set()))

    def _repo(self, repo_id: str, user: str | None, write: bool = False) -> Repo:
        repo = self.hub.state.repos.get(repo_id)
        if repo is None or (repo.private and not self._can_write(user, repo.namespace)):
            raise HttpError(404, "Repository not found", code="RepoNotFound")
        if write:
            if user is None:
                raise HttpError(401, "You must be authenticated to access this resource.")
            if not self._can_write(user, repo.namespace):
                raise HttpError(403, f"You don't have the rights to write to {repo_id}",
                                headers={"X-Error-Message": f"You don't have the rights to write to {repo_id}"})
        return repo

    def _commit_of(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(unquote(revision))
        if commit is None:
            raise HttpError(404, f"Invalid rev id: {unquote(revision)}", code="RevisionNotFound")
        return commit

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        self._raw_body = self._read_body()
        with self.hub.lock:
            try:
                user = self._user()
                self._route(path, query, user)
            except HttpError as e:
                headers = dict(e.headers)
                if e.code:
                    headers["X-Error-Code"] = e.code
                    headers.setdefault("X-Error-Message", e.message)
                self._json(e.status, {"error": e.message, **e.extra}, headers)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _dispatch  # noqa: N815

    # ------------------------------------------------------------------ routes

    def _route(self, path: str, query: dict, user: str | None) -> None:
        m = self.command
        if path == "/api/whoami-v2" and m == "GET":
            if user is None:
                raise HttpError(401, "Invalid username or password.")
            orgs = [{"name": o, "type": "org"} for o, members in self.hub.state.orgs.items() if user in members]
            return self._json(200, {"type": "user", "name": user, "orgs": orgs})
        if path == "/api/repos/create" and m == "POST":
            return self._create_repo(user)
        if path == "/api/validate-yaml" and m == "POST":
            return self._validate_yaml()
        if path.startswith("/__storage__/"):
            return self._storage(path)
        if path.startswith("/__cdn__/"):
            return self._cdn(path)
        if path.startswith("/api/models/"):
            repo_id, rest = _split_repo(path, "/api/models/")
            return self._model_api(repo_id, rest, query, user)
        if path.startswith(("/api/datasets/", "/api/spaces/")):
            raise HttpError(404, "Repository not found", code="RepoNotFound")
        if ".git/info/lfs/objects/" in path and m == "POST":
            repo_part, action = path.lstrip("/").split(".git/info/lfs/objects/", 1)
            return self._lfs(repo_part, action, user)
        parts = path.lstrip("/").split("/", 3)
        if len(parts) == 4 and parts[2] == "resolve" and m in ("GET", "HEAD"):
            rev, _, file_path = parts[3].partition("/")
            return self._resolve(f"{parts[0]}/{parts[1]}", rev, unquote(file_path), user)
        raise HttpError(404, "Not Found")

    def _create_repo(self, user: str | None) -> None:
        if user is None:
            raise HttpError(401, "You must be authenticated to create a repo.")
        data = json.loads(self._body() or b"{}")
        if data.get("type", "model") != "model":
            raise HttpError(400, "This loopback Hub only hosts model repos.")
        name, namespace = data.get("name") or "", data.get("organization") or user
        if not NAME_RE.match(name) or "--" in name or ".." in name or name.endswith(".git"):
            raise HttpError(400, f"Invalid repo name: {name!r}")
        if namespace != user and namespace not in self.hub.state.orgs and namespace not in set(
                self.hub.state.tokens.values()):
            raise HttpError(404, f"Namespace {namespace} not found")
        if not self._can_write(user, namespace):
            raise HttpError(403, "You don't have the rights to create a model under this namespace",
                            headers={"X-Error-Message": "You don't have the rights to create a model under "
                                     "this namespace"})
        repo_id = f"{namespace}/{name}"
        url = f"{self.hub.url}/{repo_id}"
        if repo_id in self.hub.state.repos:
            raise HttpError(409, "You already created this model repo", extra={"url": url})
        private = data.get("visibility") == "private" or bool(data.get("private"))
        self.hub.create_repo(repo_id, private=private)
        self._json(200, {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _validate_yaml(self) -> None:
        """Checks the README metadata like the Hub does for the fields textxfer writes."""
        data = json.loads(self._body() or b"{}")
        content = data.get("content", "")
        errors: list[dict] = []
        meta: Any = {}
        if content.startswith("---"):
            try:
                meta = yaml.safe_load(content.split("---", 2)[1]) or {}
            except yaml.YAMLError as e:
                errors.append({"message": f"Invalid YAML: {e}"})
        if not isinstance(meta, dict):
            errors.append({"message": "Metadata must be a YAML mapping"})
            meta = {}
        if "pipeline_tag" in meta and meta["pipeline_tag"] not in KNOWN_PIPELINE_TAGS:
            errors.append({"message": f"\"pipeline_tag\" must be a valid pipeline tag, not {meta['pipeline_tag']}"})
        for key in ("tags", "datasets"):
            if key in meta and not (isinstance(meta[key], list) and all(isinstance(t, str) for t in meta[key])):
                errors.append({"message": f"\"{key}\" must be a list of strings"})
        if "model-index" in meta:
            from huggingface_hub.repocard_data import model_index_to_eval_results

            try:
                model_index_to_eval_results(meta["model-index"])
            except Exception as e:  # the client's own parser of the spec: anything it rejects is invalid
                errors.append({"message": f"\"model-index\" is invalid: {e!r}"})
        self._json(400 if errors else 200, {"errors": errors, "warnings": []})

    def _model_api(self, repo_id: str, rest: str, query: dict, user: str | None) -> None:
        m = self.command
        if rest == "" or rest.startswith("revision/"):
            if m != "GET":
                raise HttpError(405, "Method not allowed")
            repo = self._repo(repo_id, user)
            commit = self._commit_of(repo, rest.removeprefix("revision/") if rest else "main")
            return self._json(200, self._info(repo, commit))
        action, _, arg = rest.partition("/")
        if action == "preupload" and m == "POST":
            repo = self._repo(repo_id, user, write=True)
            commit = self._commit_of(repo, arg)
            files = json.loads(self._body())["files"]
            out = []
            for f in files:
                sample = base64.b64decode(f.get("sample", ""))
                mode = self.hub.upload_mode(f["path"], int(f["size"]), sample)
                existing = commit.files.get(f["path"])
                oid = None
                if existing is not None:
                    oid = existing.sha256 if existing.lfs else git_blob_oid(existing.content)
                out.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
            return self._json(200, {"files": out, "commitOid": commit.oid})
        if action == "commit" and m == "POST":
            return self._commit_route(repo_id, arg, query, user)
        if action == "branch" and m == "POST":
            repo = self._repo(repo_id, user, write=True)
            branch = unquote(arg)
            if branch in repo.branches:
                raise HttpError(409, "Reference already exists")
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", branch) or ".." in branch:
                raise HttpError(400, f"Invalid branch name: {branch}")
            start = (json.loads(self._body() or b"{}") or {}).get("startingPoint") or "main"
            repo.branches[branch] = self._commit_of(repo, start).oid
            return self._json(200, {})
        if action == "refs" and m == "GET":
            repo = self._repo(repo_id, user)
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": o} for b, o in repo.branches.items()]
            return self._json(200, {"branches": branches, "tags": [], "converts": []})
        if action == "settings" and m == "PUT":
            repo = self._repo(repo_id, user, write=True)
            data = json.loads(self._body() or b"{}")
            if "visibility" in data:
                repo.private = data["visibility"] == "private"
            elif "private" in data:
                repo.private = bool(data["private"])
            return self._json(200, {})
        if action == "tree" and m == "GET":
            repo = self._repo(repo_id, user)
            rev, _, sub = arg.partition("/")
            commit = self._commit_of(repo, rev)
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return self._json(200, self._tree(commit, unquote(sub).strip("/"), recursive))
        raise HttpError(404, "Not Found")

    def _info(self, repo: Repo, commit: Commit) -> dict:
        meta: dict = {}
        readme = commit.files.get("README.md")
        if readme is not None and readme.content.startswith(b"---"):
            try:
                meta = yaml.safe_load(readme.content.decode().split("---", 2)[1]) or {}
            except yaml.YAMLError:
                meta = {}
        return {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
            "modelId": repo.repo_id, "author": repo.namespace, "sha": commit.oid,
            "lastModified": commit.date, "createdAt": repo.created_at, "private": repo.private,
            "gated": False, "disabled": False, "downloads": 0, "likes": 0,
            "library_name": meta.get("library_name"), "pipeline_tag": meta.get("pipeline_tag"),
            "tags": list(meta.get("tags") or []), "cardData": meta or None,
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        }

    def _tree(self, commit: Commit, sub: str, recursive: bool) -> list[dict]:
        prefix = f"{sub}/" if sub else ""
        paths = sorted(p for p in commit.files if p.startswith(prefix))
        if sub and not paths:
            raise HttpError(404, f"{sub} does not exist", code="EntryNotFound")
        entries, folders = [], set()
        for p in paths:
            rel = p[len(prefix):]
            if "/" in rel and not recursive:
                folders.add(prefix + rel.split("/")[0])
                continue
            if recursive:
                parts = rel.split("/")[:-1]
                folders.update(prefix + "/".join(parts[:i + 1]) for i in range(len(parts)))
            blob = commit.files[p]
            entry = {"type": "file", "oid": blob.oid, "size": len(blob.content), "path": p}
            if blob.lfs:
                entry["lfs"] = {"oid": blob.sha256, "size": len(blob.content),
                                "pointerSize": len(lfs_pointer(blob.sha256, len(blob.content)))}
            entries.append(entry)
        for folder in sorted(folders):
            oid = hashlib.sha1(json.dumps([folder, commit.oid]).encode()).hexdigest()
            entries.append({"type": "directory", "oid": oid, "size": 0, "path": folder})
        return sorted(entries, key=lambda e: e["path"])

    def _commit_route(self, repo_id: str, revision: str, query: dict, user: str | None) -> None:
        repo = self._repo(repo_id, user, write=True)
        branch = unquote(revision)
        if query.get("create_pr"):
            raise HttpError(400, "This loopback Hub does not open pull requests.")
        if branch not in repo.branches:
            raise HttpError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
        if "ndjson" not in self.headers.get("Content-Type", ""):
            raise HttpError(400, "Commit payload must be application/x-ndjson")
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HttpError(400, "The first NDJSON line must be the commit header")
        header = lines[0]["value"]
        head = repo.commits[repo.branches[branch]]
        parent = header.get("parentCommit")
        if parent and not head.oid.startswith(parent):
            raise HttpError(412, "A commit has happened since. Please refresh and try again.")
        if not header.get("summary"):
            raise HttpError(400, "Commit summary is required")
        files, operations = dict(head.files), []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            path = value.get("path", "")
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HttpError(400, f"Unsupported encoding for {path}")
                content = base64.b64decode(value["content"])
                files[path] = Blob(content, lfs=False)
                operations.append({"key": key, "path": path, "size": len(content)})
            elif key == "lfsFile":
                content = repo.lfs_objects.get(value.get("oid", ""))
                if content is None or ("size" in value and value["size"] != len(content)):
                    raise HttpError(400, "Your push was rejected because an LFS pointer pointed to a file "
                                         f"that does not exist ({path})")
                files[path] = Blob(content, lfs=True)
                operations.append({"key": key, "path": path, "size": len(content)})
            elif key == "deletedFile":
                if path not in files:
                    raise HttpError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
                del files[path]
                operations.append({"key": key, "path": path})
            elif key == "deletedFolder":
                folder = path.rstrip("/") + "/"
                for p in [p for p in files if p.startswith(folder)]:
                    del files[p]
                operations.append({"key": key, "path": path})
            else:
                raise HttpError(400, f"Unknown commit operation {key!r}")
        commit = self.hub._commit(repo, head.oid, branch, header["summary"], header.get("description", ""),
                                  user or "", files, operations)
        self._json(200, {"success": True, "commitOid": commit.oid,
                         "commitUrl": f"{self.hub.url}/{repo_id}/commit/{commit.oid}",
                         "hookOutput": "", "pullRequestUrl": None})

    def _lfs(self, repo_id: str, action: str, user: str | None) -> None:
        repo = self._repo(repo_id, user, write=True)
        data = json.loads(self._body() or b"{}")
        if action == "batch":
            if data.get("operation") != "upload":
                raise HttpError(400, "Only uploads go through this loopback batch API")
            objects = []
            for obj in data.get("objects", []):
                oid, size = obj["oid"], int(obj["size"])
                out: dict = {"oid": oid, "size": size, "authenticated": True}
                if oid not in repo.lfs_objects:
                    sig = self.hub.sign(repo_id, oid, str(size))
                    out["actions"] = {
                        "upload": {"href": f"{self.hub.storage_url}/__storage__/{quote(repo_id, safe='')}/{oid}"
                                           f"/{size}?X-Amz-Signature={sig}", "header": {}},
                        "verify": {"href": f"{self.hub.url}/{repo_id}.git/info/lfs/objects/verify",
                                   "header": {}},
                    }
                objects.append(out)
            return self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                              content_type="application/vnd.git-lfs+json")
        if action == "verify":
            content = repo.lfs_objects.get(data.get("oid", ""))
            if content is None or len(content) != data.get("size"):
                raise HttpError(404, "Object not found")
            return self._json(200, {"message": "ok"})
        raise HttpError(404, "Not Found")

    def _storage(self, path: str) -> None:
        """The presigned 'S3' PUT: no auth header, the signature in the URL; checks the bytes' sha256."""
        if self.command != "PUT":
            raise HttpError(405, "Method not allowed")
        _, _, enc_repo, oid, size = path.split("/", 4)
        repo_id = unquote(enc_repo)
        sig = parse_qs(urlsplit(self.path).query).get("X-Amz-Signature", [""])[0]
        if not hmac.compare_digest(sig, self.hub.sign(repo_id, oid, size)):
            raise HttpError(403, "SignatureDoesNotMatch")
        body = self._body()
        if hashlib.sha256(body).hexdigest() != oid or len(body) != int(size):
            raise HttpError(400, "Uploaded content does not match its oid and size")
        self.hub.state.repos[repo_id].lfs_objects[oid] = body
        self._send(200, b"", {"ETag": f'"{hashlib.md5(body).hexdigest()}"'}, content_type="text/plain")

    def _cdn(self, path: str) -> None:
        _, _, enc_repo, sha = path.split("/", 3)
        repo_id = unquote(enc_repo)
        sig = parse_qs(urlsplit(self.path).query).get("sig", [""])[0]
        if not hmac.compare_digest(sig, self.hub.sign("cdn", repo_id, sha)):
            raise HttpError(403, "Signature expired or invalid")
        content = self.hub.state.repos[repo_id].lfs_objects[sha]
        self._send_content(content, {"ETag": f'"{sha}"'})

    def _send_content(self, content: bytes, headers: dict) -> None:
        """200 with the bytes, or 206 for a `Range: bytes=N-` resume request."""
        rng = self.headers.get("Range", "")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
        if m:
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(content) - 1
            part = content[start:end + 1]
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(content)}", "Accept-Ranges": "bytes"}
            return self._send(206, part, headers, content_type="application/octet-stream")
        self._send(200, content, {**headers, "Accept-Ranges": "bytes"}, content_type="application/octet-stream")

    def _resolve(self, repo_id: str, revision: str, file_path: str, user: str | None) -> None:
        repo = self._repo(repo_id, user)
        commit = self._commit_of(repo, revision)
        blob = commit.files.get(file_path)
        if blob is None:
            raise HttpError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid}
        if blob.lfs:
            sha = blob.sha256
            location = f"{self.hub.storage_url}/__cdn__/{quote(repo_id, safe='')}/{sha}?sig={self.hub.sign('cdn', repo_id, sha)}"
            headers.update({"Location": location, "ETag": f'"{blob.oid}"', "X-Linked-Etag": f'"{sha}"',
                            "X-Linked-Size": len(blob.content)})
            return self._send(302, b"", headers, content_type="text/plain")
        headers["ETag"] = f'"{blob.oid}"'
        self._send_content(blob.content, headers)
