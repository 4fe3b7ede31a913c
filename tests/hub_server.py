"""In-process fake of the Hugging Face Hub HTTP API, for tests.

``FakeHub`` is a small HTTP server (standard library only: ``http.server.ThreadingHTTPServer``)
that listens on 127.0.0.1 and speaks enough of the Hub protocol for the *real*
``huggingface_hub`` client (2.x, with Xet disabled) to work against it:

* ``create_repo`` (private flag / visibility, ``exist_ok``), ``delete_repo``, ``update_repo_settings``
* ``create_commit`` / ``upload_file`` / ``upload_folder``: the ``preupload`` endpoint, the Git LFS
  batch endpoint (``{repo}.git/info/lfs/objects/batch``), basic and multipart LFS uploads,
  LFS verify, and the ndjson ``/commit`` endpoint (``file``, ``lfsFile``, ``deletedFile``,
  ``deletedFolder`` operations, ``parentCommit``, ``create_pr=1``)
* ``create_branch`` / ``delete_branch`` / ``create_tag`` / ``delete_tag``, pull-request refs (``refs/pr/N``)
* ``list_repo_refs``, ``list_repo_files`` / ``list_repo_tree``, ``get_paths_info``,
  ``list_repo_commits``, ``model_info`` / ``dataset_info`` / ``repo_info`` / ``repo_exists`` / ``file_exists``
* ``hf_hub_download`` / ``snapshot_download`` with a ``revision`` (branch, tag, PR ref or commit sha,
  full or short): ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag``,
  ``X-Linked-Etag``, ``X-Linked-Size``; LFS files are answered with a 302 ``Location`` redirect to a
  signed "CDN" URL (served by the same server, under the host name ``localhost`` when it resolves to
  127.0.0.1, so that the client treats it as a foreign host and drops the ``Authorization`` header,
  as with the real CDN). ``Range`` requests are honoured.
* ``whoami`` (``/api/whoami-v2``), ``/api/validate-yaml`` (README metadata check) and
  ``/api/agent-harnesses`` (fetched by the client when it builds its headers).

Storage: regular files in memory (keyed by their git blob sha1), LFS objects content-addressed by
sha256 in a temporary folder. Every commit gets a real-looking 40-hex sha and stores a full
snapshot of the file tree; every ref (``refs/heads/*``, ``refs/tags/*``, ``refs/pr/*``) points to a
commit. New repos start, like on the Hub, with an "initial commit" holding a ``.gitattributes``
that routes the usual binary extensions (``*.safetensors``, ``*.bin``, ...) to LFS. Preupload routes
a file to LFS if it matches a ``filter=lfs`` pattern of that ``.gitattributes``, is larger than
``lfs_threshold`` (10 MiB) or looks binary (NUL byte in the sample).

Auth: the server is created with a write token (``FakeHub.token``, default ``DEFAULT_TOKEN``) and
optional read-only tokens. Write endpoints without ``Authorization: Bearer <token>`` get 401; an
unknown token gets 401 on every endpoint (like the Hub); a read token gets 403 on writes. Public
repos can be read anonymously; private repos answer 401 + ``X-Error-Code: RepoNotFound`` without a
token (the client raises ``RepositoryNotFoundError``, ``err.response.status_code == 401``).

Failure injection: ``hub.fail_next(kind, times=1, status=500, nth=1, ...)`` makes the ``nth``
matching request (and the ``times - 1`` following ones) fail. Kinds: ``"lfs_upload"`` (single PUT or
multipart part PUT), ``"lfs_batch"``, ``"lfs_verify"``, ``"lfs_complete"``, ``"preupload"``,
``"commit"``, ``"create_repo"``, ``"resolve"``, ``"cdn"`` (LFS download), ``"repo_info"``,
``"tree"``, ``"refs"``, ``"branch"``, ``"tag"``, ``"whoami"``, ... or ``"*"``. Beware of the client's
own retries: ``huggingface_hub`` retries 408/429/5xx and dropped connections on the preupload, LFS
batch, LFS PUT/verify/complete and tree requests (up to 5 retries with 1, 2, 4, 8, 8 s sleeps), so a
single 500 there is *absorbed* (the push succeeds, about 1 s later). To make a push *fail*, inject on
``"commit"`` (the POST /commit is not retried), or use a non-retried status on LFS uploads
(``status=403``, ``400``, ...). ``when="after"`` applies the request first and then answers the error
(a "lost response"). ``drop_connection=True`` closes the socket without answering.

How to use it -- ORDER MATTERS: ``huggingface_hub`` reads ``HF_ENDPOINT`` and the other settings
once, when it is imported (and so does everything importing it: transformers, peft, timm, ...).

1. Before anything imports ``huggingface_hub`` -- at the top of ``tests/conftest.py``, after
   setting ``HF_HOME`` if conftest does -- call::

       from hub_server import configure_hub_env   # tests/ is on sys.path under pytest
       configure_hub_env()

   It picks a free port once per process (later calls reuse it) and sets, in this order:

   * ``HF_ENDPOINT=http://127.0.0.1:<port>`` and ``HF_HUB_DISABLE_XET=1`` (uploads use LFS, not Xet);
   * ``HF_HOME``: kept if already set to a folder under the system temp dir, else a new temp folder
     (removed at exit) with ``HF_HUB_CACHE=$HF_HOME/hub`` -- so nothing touches ~/.cache;
   * removes ``HF_TOKEN``/``HUGGING_FACE_HUB_TOKEN`` (a real token would get 401 from the fake server;
     pass ``export_token=True`` to set ``HF_TOKEN`` to the fake token instead -- the client reads
     ``HF_TOKEN`` at call time, so ``monkeypatch.setenv("HF_TOKEN", hub.token)`` works too),
     ``HUGGINGFACE_CO_STAGING`` (would override the endpoint) and ``HF_HUB_ENABLE_HF_TRANSFER``;
   * defaults (``setdefault``) ``HF_HUB_DISABLE_TELEMETRY``, ``HF_HUB_DISABLE_PROGRESS_BARS``,
     ``HF_HUB_DISABLE_SYMLINKS_WARNING``, ``HF_HUB_DISABLE_UPDATE_CHECK`` to ``1``.

   ``HF_HUB_OFFLINE`` is left as it is, so the rest of a test suite can stay offline: while a fake
   Hub started by ``start_fake_hub()`` (or the fixture) runs, the loaded client is switched online
   through ``hub_client_online()`` (patches ``huggingface_hub.constants.HF_HUB_OFFLINE``, which
   huggingface_hub and transformers read at call time, and ``datasets.config``), restored by ``stop()``.
   If ``huggingface_hub`` was already imported with another endpoint, ``configure_hub_env`` patches
   the loaded client (``constants.ENDPOINT`` & co) as a best effort and warns.
2. Then import ``huggingface_hub`` / transformers, and start a server on that port:
   ``hub = start_fake_hub()`` (or ``with start_fake_hub() as hub:``), or use the ``fake_hub``
   pytest fixture from this module (``from hub_server import fake_hub`` in conftest or in a test
   module registers it). Call ``hub.stop()`` when done. Servers can be started and stopped one after
   the other on the same port (each one starts empty), but only one at a time.

Only the standard library is used; ``huggingface_hub`` is never imported by this module.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fnmatch
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote

__all__ = [
    "DEFAULT_TOKEN",
    "DEFAULT_READ_TOKEN",
    "DEFAULT_USERNAME",
    "FakeHub",
    "FailureRule",
    "RequestRecord",
    "configure_hub_env",
    "hub_client_online",
    "start_fake_hub",
    "fake_hub",
]

DEFAULT_TOKEN = "hf_fakehub_write_token_for_tests_0000"
DEFAULT_READ_TOKEN = "hf_fakehub_read_token_for_tests_00000"
DEFAULT_USERNAME = "fake-user"

# Same LFS patterns as the `.gitattributes` the Hub puts in every new model repo.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
        "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
        "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*",
        "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
    )
)  # fmt: skip

_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/", "kernel": "kernels/"}
_SHA40 = re.compile(r"^[0-9a-f]{40}$")
_SHORT_SHA = re.compile(r"^[0-9a-f]{7,39}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

_ENV_MARKER = "HFTL_FAKE_HUB_ENDPOINT"  # set by configure_hub_env() so that it is idempotent


# --------------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------------


def _pick_free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_from_endpoint(endpoint: str | None) -> int | None:
    m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/?", endpoint or "")
    return int(m.group(1)) if m else None


def _is_temp_path(path: str) -> bool:
    try:
        return Path(path).resolve().is_relative_to(Path(tempfile.gettempdir()).resolve())
    except (OSError, ValueError):
        return False


def configure_hub_env(
    port: int | None = None,
    *,
    hf_home: str | os.PathLike | None = None,
    export_token: bool = False,
    token: str = DEFAULT_TOKEN,
) -> dict[str, str]:
    """Point ``huggingface_hub`` at a local fake Hub. Call it BEFORE ``huggingface_hub`` is imported.

    Idempotent: a later call (e.g. from a test module after conftest already called it) keeps the
    port chosen by the first one. ``HF_HOME`` is kept when it is already set to a folder under the
    system temp dir (e.g. by conftest), else a fresh temp folder is used (or ``hf_home``).
    Offline settings (``HF_HUB_OFFLINE`` ...) are left alone: ``start_fake_hub()`` / the
    ``fake_hub`` fixture switch the loaded client online while a server runs (``hub_client_online``).
    Returns the environment variables it set.
    """
    if port is None:
        port = _port_from_endpoint(os.environ.get(_ENV_MARKER)) or _port_from_endpoint(
            os.environ.get("HF_ENDPOINT")
        )
    if port is None:
        port = _pick_free_port()
    endpoint = f"http://127.0.0.1:{port}"

    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HUB_DISABLE_XET": "1",
        _ENV_MARKER: endpoint,
    }
    current_home = os.environ.get("HF_HOME")
    if hf_home is None and current_home and _is_temp_path(current_home):
        hf_home = current_home  # already isolated (e.g. by conftest): keep it and its derived caches
    else:
        if hf_home is None:
            hf_home = tempfile.mkdtemp(prefix="fake-hub-hf-home-")
            atexit.register(shutil.rmtree, hf_home, True)
        hf_home = str(hf_home)
        env["HF_HOME"] = hf_home
        env["HF_HUB_CACHE"] = os.path.join(hf_home, "hub")
        for name in (
            "HUGGINGFACE_HUB_CACHE",
            "HUGGINGFACE_ASSETS_CACHE",
            "HF_ASSETS_CACHE",
            "HF_TOKEN_PATH",
            "HF_XET_CACHE",
            "TRANSFORMERS_CACHE",
        ):
            os.environ.pop(name, None)
    # A real token would be rejected (401) by the fake server; staging mode would override HF_ENDPOINT.
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_CO_STAGING", "HF_HUB_ENABLE_HF_TRANSFER"):
        os.environ.pop(name, None)
    if export_token:
        env["HF_TOKEN"] = token
    os.environ.update(env)
    for name in (
        "HF_HUB_DISABLE_TELEMETRY",
        "HF_HUB_DISABLE_PROGRESS_BARS",
        "HF_HUB_DISABLE_SYMLINKS_WARNING",
        "HF_HUB_DISABLE_UPDATE_CHECK",
    ):
        env[name] = os.environ.setdefault(name, "1")

    if "huggingface_hub.constants" in sys.modules:
        constants = sys.modules["huggingface_hub.constants"]
        if getattr(constants, "ENDPOINT", None) != endpoint or not getattr(
            constants, "HF_HUB_DISABLE_XET", False
        ):
            warnings.warn(
                "huggingface_hub was imported before configure_hub_env(): patching the loaded client to use "
                f"{endpoint}. Call configure_hub_env() at the top of conftest.py to avoid this.",
                stacklevel=2,
            )
            _patch_loaded_client(endpoint, hf_home)
    return env


@contextlib.contextmanager
def hub_client_online() -> Iterator[None]:
    """Temporarily switch an offline-configured client online (``HF_HUB_OFFLINE=1`` blocks every request).

    Patches ``huggingface_hub.constants.HF_HUB_OFFLINE`` (read at call time by huggingface_hub and
    transformers) and ``datasets.config.HF_HUB_OFFLINE`` if those modules are loaded, and unsets the
    offline environment variables; everything is restored on exit.
    """
    env_names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    saved_env = {name: os.environ.pop(name, None) for name in env_names}
    saved_attrs = []
    for module_name, attrs in (
        ("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
        ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")),
    ):
        module = sys.modules.get(module_name)
        for attr in attrs:
            if module is not None and hasattr(module, attr):
                saved_attrs.append((module, attr, getattr(module, attr)))
                setattr(module, attr, False)
    try:
        yield
    finally:
        for module, attr, value in reversed(saved_attrs):
            setattr(module, attr, value)
        for name, value in saved_env.items():
            if value is not None:
                os.environ[name] = value


def _patch_loaded_client(endpoint: str, hf_home: str) -> None:
    """Best effort: re-point an already imported ``huggingface_hub`` to ``endpoint``."""
    c = sys.modules["huggingface_hub.constants"]
    c.ENDPOINT = endpoint
    c.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    c.HF_HUB_DISABLE_XET = True
    c.HF_HUB_DISABLE_TELEMETRY = True
    c.HF_HOME = hf_home
    c.HF_HUB_CACHE = c.HUGGINGFACE_HUB_CACHE = os.path.join(hf_home, "hub")
    c.HF_ASSETS_CACHE = c.HUGGINGFACE_ASSETS_CACHE = os.path.join(hf_home, "assets")
    c.HF_TOKEN_PATH = os.path.join(hf_home, "token")
    c.HF_STORED_TOKENS_PATH = os.path.join(hf_home, "stored_tokens")
    c.HF_XET_CACHE = os.path.join(hf_home, "xet")
    for name in ("AGENT_HARNESSES_PATH", "CHECK_FOR_UPDATE_DONE_PATH", "CHECK_FOR_SKILL_UPDATE_DONE_PATH"):
        if hasattr(c, name):
            setattr(c, name, os.path.join(hf_home, os.path.basename(getattr(c, name))))
    http = sys.modules.get("huggingface_hub.utils._http")
    if http is not None and hasattr(http, "_HUB_ORIGINS") and hasattr(http, "_url_origin"):
        http._HUB_ORIGINS = frozenset({*http._HUB_ORIGINS, http._url_origin(endpoint)})
    hf_api = sys.modules.get("huggingface_hub.hf_api")
    if hf_api is not None and hasattr(hf_api, "api"):
        hf_api.api.endpoint = endpoint


def start_fake_hub(port: int | None = None, *, client_online: bool = True, **kwargs: Any) -> FakeHub:
    """Start and return a ``FakeHub``.

    The port defaults to the one configured by ``configure_hub_env()`` (read from ``HF_ENDPOINT``); if
    the environment was not configured yet, it is configured now (which only helps if
    ``huggingface_hub`` has not been imported yet). With ``client_online`` (default) the loaded client
    is switched online until ``hub.stop()`` (see ``hub_client_online``). Other keyword arguments go
    to ``FakeHub``.
    """
    if port is None:
        port = _port_from_endpoint(os.environ.get(_ENV_MARKER)) or _port_from_endpoint(
            os.environ.get("HF_ENDPOINT")
        )
        if port is None:
            port = _port_from_endpoint(configure_hub_env()["HF_ENDPOINT"])
    hub = FakeHub(port=port, **kwargs).start()
    if client_online:
        online = hub_client_online()
        online.__enter__()
        hub._on_stop.append(lambda: online.__exit__(None, None, None))
    return hub


# --------------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------------


class HubError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict | None = None,
        extra: dict | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}  # additional keys of the JSON error body


@dataclass
class _Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FailureRule:
    """A failure injected with ``FakeHub.fail_next``. ``triggered`` counts the requests it failed."""

    kind: str
    times: int = 1
    status: int = 500
    nth: int = 1
    message: str | None = None
    when: str = "before"
    drop_connection: bool = False
    method: str | None = None
    repo_id: str | None = None
    triggered: int = 0
    _seen: int = 0

    @property
    def exhausted(self) -> bool:
        return self.triggered >= self.times


@dataclass
class RequestRecord:
    method: str
    path: str
    kind: str
    status: int
    repo_id: str | None
    authenticated: bool
    injected: bool = False


@dataclass
class _FileEntry:
    path: str
    size: int
    blob_id: str  # git oid (of the content for regular files, of the pointer file for LFS files)
    lfs_oid: str | None = None  # sha256 of the content, for LFS files
    pointer_size: int | None = None


@dataclass
class _Commit:
    sha: str
    parents: list[str]
    tree: dict[str, _FileEntry]
    title: str
    message: str
    date: str
    author: str


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    id: str
    gated: Any = False
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)
    lfs_oids: set[str] = field(default_factory=set)
    next_pr: int = 1

    @property
    def key(self) -> str:
        return f"{self.repo_type}/{self.repo_id}"

    @property
    def url_path(self) -> str:
        return _URL_PREFIX[self.repo_type] + self.repo_id


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


def _match_attr_pattern(pattern: str, path: str) -> bool:
    """Approximation of gitattributes / gitignore matching (good enough for the usual patterns)."""
    pattern = pattern.strip()
    if not pattern:
        return False
    anchored = pattern.startswith("/")
    pattern = pattern.lstrip("/")
    if pattern.endswith("/"):  # directory pattern
        d = pattern.rstrip("/")
        return path.startswith(d + "/") or f"/{d}/" in f"/{path}"
    if "/" not in pattern and not anchored:
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    if pattern.endswith("/**/*"):
        return path.startswith(pattern[: -len("**/*")])
    return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, pattern.replace("**/", ""))


# --------------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class FakeHub:
    """In-process fake Hugging Face Hub. See the module docstring.

    Args:
        token: the write token the server accepts (``Authorization: Bearer <token>``).
        port: port on 127.0.0.1 (default: a free one; must match ``HF_ENDPOINT`` for the global client).
        username: the user the tokens belong to (``whoami``, default namespace of ``create_repo``).
        read_tokens: extra tokens that can read private repos but get 403 on writes.
        storage_dir: where LFS objects are stored (default: a temp folder removed by ``stop()``).
        lfs_threshold: files at least this big are routed to LFS by preupload.
        multipart_chunk_size: if set, LFS objects bigger than this are uploaded with the multipart
            protocol, in parts of this size (default: always a single PUT).
        cdn_host: host name used in LFS download / upload URLs. ``"auto"`` uses ``localhost`` when it
            resolves to 127.0.0.1 (a "foreign" host for the client, like the real CDN), else 127.0.0.1.
        initial_gitattributes: create new repos with an initial commit holding ``.gitattributes``.
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        port: int | None = None,
        username: str = DEFAULT_USERNAME,
        read_tokens: tuple[str, ...] | list[str] = (DEFAULT_READ_TOKEN,),
        storage_dir: str | os.PathLike | None = None,
        lfs_threshold: int = 10 * 1024 * 1024,
        multipart_chunk_size: int | None = None,
        cdn_host: str = "auto",
        initial_gitattributes: bool = True,
    ):
        self.token = token
        self.username = username
        self.read_tokens = tuple(read_tokens)
        self.host = "127.0.0.1"
        self.port = port or 0
        self.lfs_threshold = lfs_threshold
        self.multipart_chunk_size = multipart_chunk_size
        self.initial_gitattributes = initial_gitattributes
        self._cdn_host_setting = cdn_host
        self._storage_arg = storage_dir
        self._storage_dir: Path | None = None
        self._owns_storage = False
        self._secret = secrets.token_bytes(16)
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._counter = 0
        self.repos: dict[str, _Repo] = {}  # key: "<type>/<namespace>/<name>"
        self._blobs: dict[str, bytes] = {}  # regular files, by git blob sha1
        self._lfs_sizes: dict[str, int] = {}  # LFS objects stored on disk, by sha256
        self._multipart: dict[tuple[str, str], dict[int, bytes]] = {}
        self.failures: list[FailureRule] = []
        self.requests: list[RequestRecord] = []
        self.server_errors: list[str] = []  # tracebacks of unexpected exceptions in handlers
        self._on_stop: list[Callable[[], Any]] = []

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> FakeHub:
        if self._server is not None:
            return self
        if self._storage_arg is not None:
            self._storage_dir = Path(self._storage_arg)
            self._storage_dir.mkdir(parents=True, exist_ok=True)
        else:
            self._storage_dir = Path(tempfile.mkdtemp(prefix="fake-hub-storage-"))
            self._owns_storage = True
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._server = _Server((self.host, self.port), handler)
        self.port = self._server.server_address[1]
        self.cdn_host = self._resolve_cdn_host()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"FakeHub:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._owns_storage and self._storage_dir is not None:
            shutil.rmtree(self._storage_dir, ignore_errors=True)
            self._owns_storage = False
        while self._on_stop:
            self._on_stop.pop()()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    url = endpoint

    def _resolve_cdn_host(self) -> str:
        if self._cdn_host_setting != "auto":
            return self._cdn_host_setting
        try:
            infos = socket.getaddrinfo("localhost", self.port, socket.AF_INET, socket.SOCK_STREAM)
            if infos and all(info[4][0] == "127.0.0.1" for info in infos):
                return "localhost"
        except OSError:
            pass
        return "127.0.0.1"

    @property
    def cdn_base(self) -> str:
        return f"http://{self.cdn_host}:{self.port}"

    def reset(self) -> None:
        """Forget all repos, objects, injected failures and recorded requests."""
        with self._lock:
            self.repos.clear()
            self._blobs.clear()
            self._multipart.clear()
            for oid in list(self._lfs_sizes):
                self._lfs_path(oid).unlink(missing_ok=True)
            self._lfs_sizes.clear()
            self.failures.clear()
            self.requests.clear()
            self.server_errors.clear()

    # ---------------------------------------------------------------- failure injection
    def fail_next(
        self,
        kind: str,
        times: int = 1,
        *,
        status: int = 500,
        nth: int = 1,
        message: str | None = None,
        when: str = "before",
        drop_connection: bool = False,
        method: str | None = None,
        repo_id: str | None = None,
    ) -> FailureRule:
        """Fail the ``nth`` request of ``kind`` (counting from now) and the ``times - 1`` next ones.

        ``when="before"``: the request is not applied; ``when="after"``: it is applied, then the
        error is answered instead of the real response. ``drop_connection``: close the socket
        without answering. ``method`` / ``repo_id`` narrow the match. Remember that the client
        retries some requests (see the module docstring): a single 500 on ``lfs_upload`` is retried.
        """
        if when not in ("before", "after"):
            raise ValueError("when must be 'before' or 'after'")
        rule = FailureRule(
            kind=kind,
            times=times,
            status=status,
            nth=max(1, nth),
            message=message,
            when=when,
            drop_connection=drop_connection,
            method=method.upper() if method else None,
            repo_id=repo_id,
        )
        with self._lock:
            self.failures.append(rule)
        return rule

    def clear_failures(self) -> None:
        with self._lock:
            self.failures.clear()

    def _take_failure(self, kind: str, method: str, repo_id: str | None) -> FailureRule | None:
        with self._lock:
            for rule in self.failures:
                if rule.exhausted or rule.kind not in (kind, "*"):
                    continue
                if rule.method is not None and rule.method != method:
                    continue
                if rule.repo_id is not None and rule.repo_id != repo_id:
                    continue
                rule._seen += 1
                if rule._seen < rule.nth:
                    continue
                rule.triggered += 1
                return rule
        return None

    # ---------------------------------------------------------------- inspection helpers (server side)
    def requests_of(self, kind: str, *, status: int | None = None) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.requests if r.kind == kind and (status is None or r.status == status)]

    def get_repo(self, repo_id: str, repo_type: str = "model") -> _Repo:
        with self._lock:
            return self.repos[f"{repo_type}/{repo_id}"]

    def list_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[str]:
        with self._lock:
            repo = self.get_repo(repo_id, repo_type)
            return sorted(repo.commits[self._resolve(repo, revision)].tree)

    def read_file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        with self._lock:
            repo = self.get_repo(repo_id, repo_type)
            entry = repo.commits[self._resolve(repo, revision)].tree[path]
            return self._read_entry(entry)

    def head_commit(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        with self._lock:
            return self._resolve(self.get_repo(repo_id, repo_type), revision)

    def commit_history(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[str]:
        """Commit shas reachable from ``revision`` following first parents, newest first."""
        with self._lock:
            repo = self.get_repo(repo_id, repo_type)
            return [c.sha for c in self._history(repo, self._resolve(repo, revision))]

    def lfs_objects(self, repo_id: str | None = None, repo_type: str = "model") -> set[str]:
        """sha256 of the LFS objects stored (for one repo, or in total)."""
        with self._lock:
            if repo_id is None:
                return set(self._lfs_sizes)
            return set(self.get_repo(repo_id, repo_type).lfs_oids)

    def create_repo(
        self, repo_id: str, *, private: bool = False, repo_type: str = "model", exist_ok: bool = False
    ) -> _Repo:
        """Create a repo directly on the server (seeding, without going through HTTP)."""
        with self._lock:
            key = f"{repo_type}/{repo_id}"
            if key in self.repos:
                if exist_ok:
                    return self.repos[key]
                raise ValueError(f"{key} exists")
            repo = _Repo(
                repo_type=repo_type,
                repo_id=repo_id,
                private=private,
                created_at=_now_iso(),
                id=secrets.token_hex(12),
            )
            tree: dict[str, _FileEntry] = {}
            if self.initial_gitattributes:
                tree[".gitattributes"] = self._store_regular(".gitattributes", DEFAULT_GITATTRIBUTES.encode())
            commit = self._new_commit(repo, [], tree, "initial commit", "")
            repo.refs["refs/heads/main"] = commit.sha
            self.repos[key] = repo
            return repo

    def add_files(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        revision: str = "main",
        message: str = "Add files",
        repo_type: str = "model",
        lfs: bool | None = None,
    ) -> str:
        """Commit ``files`` directly on the server (seeding). ``lfs=None``: same routing as preupload."""
        with self._lock:
            repo = self.get_repo(repo_id, repo_type)
            ref = self._branch_ref(repo, revision)
            parent = repo.refs[ref]
            tree = dict(repo.commits[parent].tree)
            for path, data in files.items():
                use_lfs = (
                    lfs
                    if lfs is not None
                    else self._upload_mode(repo, parent, path, len(data), data[:512]) == "lfs"
                )
                if use_lfs and data:
                    oid = hashlib.sha256(data).hexdigest()
                    self._store_lfs(oid, data)
                    repo.lfs_oids.add(oid)
                    tree[path] = self._lfs_entry(path, oid, len(data))
                else:
                    tree[path] = self._store_regular(path, data)
            commit = self._new_commit(repo, [parent], tree, message, "")
            repo.refs[ref] = commit.sha
            return commit.sha

    # ---------------------------------------------------------------- storage internals
    def _lfs_path(self, oid: str) -> Path:
        assert self._storage_dir is not None, "FakeHub is not started"
        return self._storage_dir / "lfs" / oid[:2] / oid

    def _store_lfs(self, oid: str, data: bytes) -> None:
        path = self._lfs_path(oid)
        if oid not in self._lfs_sizes or not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        self._lfs_sizes[oid] = len(data)

    def _store_regular(self, path: str, data: bytes) -> _FileEntry:
        blob_id = _git_blob_sha1(data)
        self._blobs[blob_id] = data
        return _FileEntry(path=path, size=len(data), blob_id=blob_id)

    def _lfs_entry(self, path: str, oid: str, size: int) -> _FileEntry:
        pointer = _lfs_pointer(oid, size)
        return _FileEntry(
            path=path, size=size, blob_id=_git_blob_sha1(pointer), lfs_oid=oid, pointer_size=len(pointer)
        )

    def _read_entry(self, entry: _FileEntry) -> bytes:
        if entry.lfs_oid is not None:
            return self._lfs_path(entry.lfs_oid).read_bytes()
        return self._blobs[entry.blob_id]

    def _new_commit(
        self, repo: _Repo, parents: list[str], tree: dict[str, _FileEntry], title: str, message: str
    ) -> _Commit:
        self._counter += 1
        seed = json.dumps(
            [
                repo.key,
                parents,
                sorted((p, e.blob_id) for p, e in tree.items()),
                title,
                time.time_ns(),
                self._counter,
            ]
        )
        sha = hashlib.sha1(seed.encode()).hexdigest()
        commit = _Commit(
            sha=sha,
            parents=parents,
            tree=tree,
            title=title,
            message=message,
            date=_now_iso(),
            author=self.username,
        )
        repo.commits[sha] = commit
        return commit

    def _history(self, repo: _Repo, sha: str) -> list[_Commit]:
        out = []
        current: str | None = sha
        while current is not None:
            commit = repo.commits[current]
            out.append(commit)
            current = commit.parents[0] if commit.parents else None
        return out

    def _resolve(self, repo: _Repo, revision: str | None) -> str:
        rev = revision or "main"
        for ref in (rev, f"refs/heads/{rev}", f"refs/tags/{rev}"):
            if ref.startswith("refs/") and ref in repo.refs:
                return repo.refs[ref]
        if _SHA40.match(rev) and rev in repo.commits:
            return rev
        if _SHORT_SHA.match(rev):
            matches = [sha for sha in repo.commits if sha.startswith(rev)]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _branch_ref(self, repo: _Repo, revision: str) -> str:
        """Ref that a commit on ``revision`` updates (a branch or a PR ref)."""
        if revision.startswith("refs/pr/") and revision in repo.refs:
            return revision
        name = revision[len("refs/heads/") :] if revision.startswith("refs/heads/") else revision
        if f"refs/heads/{name}" in repo.refs:
            return f"refs/heads/{name}"
        try:
            self._resolve(repo, revision)
        except HubError:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound") from None
        raise HubError(
            400, f"Invalid rev id: {revision} is not a branch, commits can only be pushed to branches"
        )

    def _upload_mode(self, repo: _Repo, commit_sha: str, path: str, size: int, sample: bytes) -> str:
        tree = repo.commits[commit_sha].tree
        attrs = tree.get(".gitattributes")
        if attrs is not None:
            for line in self._read_entry(attrs).decode(errors="replace").splitlines():
                parts = line.split()
                if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
                    if _match_attr_pattern(parts[0], path):
                        return "lfs"
        if size >= self.lfs_threshold:
            return "lfs"
        if b"\x00" in sample:
            return "lfs"
        return "regular"

    def _sign(self, *parts: str) -> str:
        return hmac.new(self._secret, "|".join(parts).encode(), hashlib.sha256).hexdigest()[:40]

    def _check_sig(self, query: dict[str, list[str]], *parts: str) -> None:
        sig = (query.get("sig") or [""])[0]
        if not hmac.compare_digest(sig, self._sign(*parts)):
            raise HubError(403, "SignatureDoesNotMatch")

    # ---------------------------------------------------------------- JSON shapes
    def _entry_json(self, repo: _Repo, commit_sha: str, entry: _FileEntry, expand: bool) -> dict:
        out: dict[str, Any] = {"type": "file", "oid": entry.blob_id, "size": entry.size, "path": entry.path}
        if entry.lfs_oid is not None:
            out["lfs"] = {"oid": entry.lfs_oid, "size": entry.size, "pointerSize": entry.pointer_size}
        if expand:
            out["lastCommit"] = self._last_commit_json(repo, commit_sha, lambda tree: tree.get(entry.path))
            out["securityFileStatus"] = {
                "status": "safe",
                "avScan": {"virusFound": False},
                "pickleImportScan": None,
            }
        return out

    def _dir_json(self, repo: _Repo, commit_sha: str, path: str, expand: bool) -> dict:
        def snapshot(tree: dict[str, _FileEntry]) -> list:
            return sorted((p, e.blob_id) for p, e in tree.items() if p.startswith(path + "/"))

        tree_id = hashlib.sha1(json.dumps(snapshot(repo.commits[commit_sha].tree)).encode()).hexdigest()
        out: dict[str, Any] = {"type": "directory", "oid": tree_id, "size": 0, "path": path}
        if expand:
            out["lastCommit"] = self._last_commit_json(repo, commit_sha, snapshot)
        return out

    def _last_commit_json(self, repo: _Repo, commit_sha: str, key: Callable[[dict], Any]) -> dict:
        history = self._history(repo, commit_sha)
        current = key(history[0].tree)
        last = history[0]
        for commit in history[1:]:
            if key(commit.tree) != current:
                break
            last = commit
        return {"id": last.sha, "title": last.title, "date": last.date}

    def _repo_info_json(self, repo: _Repo, commit_sha: str, blobs: bool) -> dict:
        commit = repo.commits[commit_sha]
        siblings = []
        for path in sorted(commit.tree):
            entry = commit.tree[path]
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.blob_id)
                if entry.lfs_oid is not None:
                    sibling["lfs"] = {
                        "size": entry.size,
                        "sha256": entry.lfs_oid,
                        "pointerSize": entry.pointer_size,
                    }
            siblings.append(sibling)
        namespace = repo.repo_id.split("/")[0]
        info = {
            "_id": repo.id,
            "id": repo.repo_id,
            "author": namespace,
            "sha": commit_sha,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(e.size for e in commit.tree.values()),
        }
        if repo.repo_type == "model":
            info.update(modelId=repo.repo_id, library_name=None, pipeline_tag=None, spaces=[])
        if repo.repo_type == "space":
            info.update(
                sdk="static", runtime={"stage": "RUNNING", "hardware": {"current": None, "requested": None}}
            )
        return info


# --------------------------------------------------------------------------------------------------
# Request handling
# --------------------------------------------------------------------------------------------------


@dataclass
class _Request:
    method: str
    path: str
    segments: list[str]
    query: dict[str, list[str]]
    headers: Any
    body: bytes
    auth: str  # "none" | "invalid" | "read" | "write"

    def q(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise HubError(400, "Invalid JSON body") from None


def _json(data: Any, status: int = 200, headers: dict | None = None) -> _Response:
    return _Response(
        status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})}
    )


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr logging
        pass

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    # ------------------------------------------------------------------ plumbing
    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _auth(self) -> str:
        header = self.headers.get("Authorization")
        if not header:
            return "none"
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() == "basic":
            try:
                value = base64.b64decode(value).decode().partition(":")[2]
            except Exception:
                return "invalid"
        elif scheme.lower() != "bearer":
            return "invalid"
        if value == self.hub.token:
            return "write"
        if value in self.hub.read_tokens:
            return "read"
        return "invalid"

    def _dispatch(self) -> None:
        hub = self.hub
        raw_path, _, raw_query = self.path.partition("?")
        body = self._read_body()
        segments = [unquote(s) for s in raw_path.split("/")[1:]]
        if segments and segments[-1] == "" and len(segments) > 1:
            segments = segments[:-1]
        req = _Request(
            method=self.command,
            path=raw_path,
            segments=segments,
            query=parse_qs(raw_query, keep_blank_values=True),
            headers=self.headers,
            body=body,
            auth=self._auth(),
        )
        kind, func, repo_key = _route(hub, req)
        repo_id = repo_key.split("/", 1)[1] if repo_key else None
        rule = hub._take_failure(kind, req.method, repo_id)
        response: _Response | None = None
        if rule is None or rule.when == "after":
            try:
                response = func()
            except HubError as e:
                response = _error_response(e)
            except Exception:  # pragma: no cover - bug in the fake server
                tb = traceback.format_exc()
                hub.server_errors.append(tb)
                response = _error_response(HubError(500, f"FakeHub internal error: {tb.splitlines()[-1]}"))
        if rule is not None:
            if rule.drop_connection:
                self._record(req, kind, 0, repo_id, injected=True)
                self.close_connection = True
                return
            message = rule.message or f"Injected failure ({kind}, HTTP {rule.status})"
            response = _error_response(HubError(rule.status, message))
        assert response is not None
        self._record(req, kind, response.status, repo_id, injected=rule is not None)
        self._send(response)

    def _record(self, req: _Request, kind: str, status: int, repo_id: str | None, injected: bool) -> None:
        with self.hub._lock:
            self.hub.requests.append(
                RequestRecord(
                    req.method, req.path, kind, status, repo_id, req.auth in ("read", "write"), injected
                )
            )

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        headers = {"Content-Length": str(len(response.body)), **response.headers}
        headers.setdefault("Content-Type", "application/octet-stream")
        headers["X-Request-Id"] = secrets.token_hex(8)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.command != "HEAD" and response.body:
            try:
                self.wfile.write(response.body)
            except (BrokenPipeError, ConnectionResetError):
                pass


def _error_response(e: HubError) -> _Response:
    headers = {"X-Error-Message": e.message.splitlines()[0][:500], **e.headers}
    if e.code:
        headers["X-Error-Code"] = e.code
    return _json({"error": e.message, **e.extra}, e.status, headers)


def _route(hub: FakeHub, req: _Request) -> tuple[str, Callable[[], _Response], str | None]:
    """Return (kind, handler, repo key) for a request."""
    s, m = req.segments, req.method
    h = _Handlers(hub, req)

    def not_found() -> _Response:
        raise HubError(404, f"Not found: {m} {req.path}")

    if not s or s == [""]:
        return "other", not_found, None
    if s[0] == "api":
        rest = s[1:]
        if rest == ["whoami-v2"]:
            return "whoami", h.whoami, None
        if rest == ["agent-harnesses"]:
            return "agent_harnesses", lambda: _json({"standardEnvVars": [], "harnesses": {}}), None
        if rest == ["validate-yaml"] and m == "POST":
            return "validate_yaml", lambda: _json({"errors": [], "warnings": []}), None
        if rest == ["repos", "create"] and m == "POST":
            return "create_repo", h.create_repo, None
        if rest == ["repos", "delete"] and m == "DELETE":
            return "delete_repo", h.delete_repo, None
        if len(rest) >= 3 and rest[0] in _REPO_TYPES:
            repo_type = _REPO_TYPES[rest[0]]
            repo_key = f"{repo_type}/{rest[1]}/{rest[2]}"
            action, args = (rest[3] if len(rest) > 3 else ""), rest[4:]
            arg = "/".join(args)
            table: dict[tuple[str, str], tuple[str, Callable[[], _Response]]] = {
                ("GET", ""): ("repo_info", lambda: h.repo_info(repo_key, None)),
                ("GET", "revision"): ("repo_info", lambda: h.repo_info(repo_key, arg)),
                ("GET", "refs"): ("refs", lambda: h.refs(repo_key)),
                ("GET", "tree"): (
                    "tree",
                    lambda: h.tree(repo_key, args[0] if args else "main", "/".join(args[1:])),
                ),
                ("POST", "paths-info"): ("paths_info", lambda: h.paths_info(repo_key, arg)),
                ("GET", "commits"): ("commits", lambda: h.commits(repo_key, arg or "main")),
                ("POST", "preupload"): ("preupload", lambda: h.preupload(repo_key, arg)),
                ("POST", "commit"): ("commit", lambda: h.commit(repo_key, arg)),
                ("POST", "branch"): ("branch", lambda: h.create_branch(repo_key, arg)),
                ("DELETE", "branch"): ("branch", lambda: h.delete_branch(repo_key, arg)),
                ("POST", "tag"): ("tag", lambda: h.create_tag(repo_key, arg)),
                ("DELETE", "tag"): ("tag", lambda: h.delete_tag(repo_key, arg)),
                ("PUT", "settings"): ("settings", lambda: h.settings(repo_key)),
            }
            if (m, action) in table:
                kind, func = table[(m, action)]
                return kind, func, repo_key
            if m == "HEAD" and action in ("", "revision"):
                return "repo_info", lambda: h.repo_info(repo_key, arg or None), repo_key
            return "other", not_found, repo_key
        return "other", not_found, None
    if s[0] == "_lfs" and len(s) >= 3:
        repo_key = req.q("repo")
        action, oid = s[1], s[2]
        if action == "upload" and m == "PUT":
            return "lfs_upload", lambda: h.lfs_put(oid), repo_key
        if action == "part" and m == "PUT" and len(s) == 4:
            return "lfs_upload", lambda: h.lfs_put_part(oid, int(s[3])), repo_key
        if action == "complete" and m == "POST":
            return "lfs_complete", lambda: h.lfs_complete(oid), repo_key
        if action == "verify" and m == "POST":
            return "lfs_verify", lambda: h.lfs_verify(oid), repo_key
        return "other", not_found, repo_key
    if s[0] == "_cdn" and len(s) >= 2 and m in ("GET", "HEAD"):
        return "cdn", lambda: h.cdn(s[1]), req.q("repo")
    # Git-style routes: /[datasets/|spaces/]{ns}/{name}(.git/info/lfs/objects/batch|/resolve/{rev}/{path})
    repo_type = "model"
    if s[0] in _REPO_TYPES and s[0] != "models" and len(s) > 3:
        repo_type, s = _REPO_TYPES[s[0]], s[1:]
    if len(s) >= 3 and s[1].endswith(".git") and s[2:] == ["info", "lfs", "objects", "batch"] and m == "POST":
        repo_key = f"{repo_type}/{s[0]}/{s[1][:-4]}"
        return "lfs_batch", lambda: h.lfs_batch(repo_key), repo_key
    if len(s) >= 5 and s[2] == "resolve" and m in ("GET", "HEAD"):
        repo_key = f"{repo_type}/{s[0]}/{s[1]}"
        return "resolve", lambda: h.resolve(repo_key, s[3], "/".join(s[4:])), repo_key
    return "other", not_found, None


class _Handlers:
    """Endpoint implementations. Each method returns a _Response or raises HubError."""

    def __init__(self, hub: FakeHub, req: _Request):
        self.hub = hub
        self.req = req

    # ------------------------------------------------------------------ auth helpers
    def _require_valid_auth(self) -> None:
        if self.req.auth == "invalid":
            raise HubError(401, "Invalid credentials in Authorization header")

    def _require_write(self) -> None:
        self._require_valid_auth()
        if self.req.auth == "none":
            raise HubError(401, "Invalid username or password.")
        if self.req.auth != "write":
            raise HubError(403, "You don't have the rights to write with this token (read-only token).")

    def _repo(self, repo_key: str, *, write: bool = False) -> _Repo:
        self._require_valid_auth()
        if write:
            self._require_write()
        repo = self.hub.repos.get(repo_key)
        if repo is None or (repo.private and self.req.auth == "none"):
            status = 401 if self.req.auth == "none" else 404
            raise HubError(status, "Repository not found", "RepoNotFound")
        return repo

    # ------------------------------------------------------------------ account / repos
    def whoami(self) -> _Response:
        self._require_valid_auth()
        if self.req.auth == "none":
            raise HubError(401, "Invalid credentials in Authorization header")
        role = "write" if self.req.auth == "write" else "read"
        return _json(
            {
                "type": "user",
                "id": hashlib.sha1(self.hub.username.encode()).hexdigest()[:24],
                "name": self.hub.username,
                "fullname": "Fake Hub User",
                "email": f"{self.hub.username}@example.com",
                "emailVerified": True,
                "canPay": False,
                "isPro": False,
                "periodEnd": None,
                "avatarUrl": "",
                "orgs": [],
                "auth": {
                    "type": "access_token",
                    "accessToken": {
                        "displayName": f"fake-{role}-token",
                        "role": role,
                        "createdAt": _now_iso(),
                    },
                },
            }
        )

    def create_repo(self) -> _Response:
        self._require_write()
        payload = self.req.json() or {}
        name = payload.get("name")
        if not name or "/" in name:
            raise HubError(400, "Invalid repo name")
        namespace = payload.get("organization") or self.hub.username
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        private = payload.get("visibility", "public") == "private" or bool(payload.get("private"))
        repo_id = f"{namespace}/{name}"
        url = f"{self.hub.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}"
        with self.hub._lock:
            if f"{repo_type}/{repo_id}" in self.hub.repos:
                raise HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
            repo = self.hub.create_repo(repo_id, private=private, repo_type=repo_type)
        return _json({"url": url, "name": repo_id, "id": repo.id})

    def delete_repo(self) -> _Response:
        self._require_write()
        payload = self.req.json() or {}
        repo_id = f"{payload.get('organization') or self.hub.username}/{payload.get('name')}"
        key = f"{payload.get('type') or 'model'}/{repo_id}"
        with self.hub._lock:
            if key not in self.hub.repos:
                raise HubError(404, "Repository not found", "RepoNotFound")
            del self.hub.repos[key]
        return _json({})

    def settings(self, repo_key: str) -> _Response:
        with self.hub._lock:
            repo = self._repo(repo_key, write=True)
            payload = self.req.json() or {}
            if "private" in payload:
                repo.private = bool(payload["private"])
            if "visibility" in payload:
                repo.private = payload["visibility"] == "private"
            if "gated" in payload:
                repo.gated = payload["gated"]
            return _json({"private": repo.private, "gated": repo.gated})

    def repo_info(self, repo_key: str, revision: str | None) -> _Response:
        with self.hub._lock:
            repo = self._repo(repo_key)
            sha = self.hub._resolve(repo, revision)
            return _json(self.hub._repo_info_json(repo, sha, blobs=_truthy(self.req.q("blobs"))))

    # ------------------------------------------------------------------ refs
    def refs(self, repo_key: str) -> _Response:
        with self.hub._lock:
            repo = self._repo(repo_key)
            out: dict[str, list] = {"branches": [], "converts": [], "tags": [], "pullRequests": []}
            for ref, sha in sorted(repo.refs.items(), key=lambda kv: (kv[0] != "refs/heads/main", kv[0])):
                if ref.startswith("refs/heads/"):
                    out["branches"].append(
                        {"name": ref[len("refs/heads/") :], "ref": ref, "targetCommit": sha}
                    )
                elif ref.startswith("refs/tags/"):
                    out["tags"].append({"name": ref[len("refs/tags/") :], "ref": ref, "targetCommit": sha})
                elif ref.startswith("refs/pr/") and _truthy(self.req.q("include_prs")):
                    out["pullRequests"].append({"name": ref, "ref": ref, "targetCommit": sha})
            return _json(out)

    def create_branch(self, repo_key: str, branch: str) -> _Response:
        with self.hub._lock:
            repo = self._repo(repo_key, write=True)
            if not branch or branch.startswith("refs/") or ".." in branch or branch.endswith("/"):
                raise HubError(400, f"Invalid reference for a branch: {branch}")
            ref = f"refs/heads/{branch}"
            if ref in repo.refs:
                raise HubError(409, "Reference already exists")
            starting_point = (self.req.json() or {}).get("startingPoint")
            repo.refs[ref] = self.hub._resolve(repo, starting_point)
            return _json({})

    def delete_branch(self, repo_key: str, branch: str) -> _Response:
        with self.hub._lock:
            repo = self._repo(repo_key, write=True)
            ref = f"refs/heads/{branch}"
            if ref not in repo.refs:
                raise HubError(404, f"Branch {branch} not found", "RevisionNotFound")
            if branch == "main":
                raise HubError(403, "Cannot delete the default branch")
            del repo.refs[ref]
            return _json({})

    def create_tag(self, repo_key: str, revision: str) -> _Response:
        with self.hub._lock:
            repo = self._repo(repo_key, write=True)
            tag = (self.req.json() or {}).get("tag")
            if not tag:
                raise HubError(400, "Missing tag")
            if f"refs/tags/{tag}" in repo.refs:
                raise HubError(409, "Tag already exists")
            repo.refs[f"refs/tags/{tag}"] = self.hub._resolve(repo, revision or "main")
            return _json({})

    def delete_tag(self, repo_key: str, tag: str) -> _Response:
        with self.hub._lock:
            repo = self._repo(repo_key, write=True)
            if repo.refs.pop(f"refs/tags/{tag}", None) is None:
                raise HubError(404, f"Tag {tag} not found", "RevisionNotFound")
            return _json({})

    def commits(self, repo_key: str, revision: str) -> _Response:
        with self.hub._lock:
            repo = self._repo(repo_key)
            sha = self.hub._resolve(repo, revision)
            return _json(
                [
                    {
                        "id": c.sha,
                        "title": c.title,
                        "message": c.message,
                        "date": c.date,
                        "authors": [{"user": c.author, "avatar": ""}],
                    }
                    for c in self.hub._history(repo, sha)
                ]
            )

    # ------------------------------------------------------------------ tree
    def tree(self, repo_key: str, revision: str, path: str) -> _Response:
        with self.hub._lock:
            repo = self._repo(repo_key)
            sha = self.hub._resolve(repo, revision)
            files = repo.commits[sha].tree
            recursive, expand = _truthy(self.req.q("recursive")), _truthy(self.req.q("expand"))
            path = path.strip("/")
            prefix = path + "/" if path else ""
            if path and not any(p.startswith(prefix) for p in files):
                raise HubError(
                    404, f"{path} does not exist on {revision}", "EntryNotFound", {"X-Repo-Commit": sha}
                )
            dirs: set[str] = set()
            entries: list[dict] = []
            for p in sorted(files):
                if not p.startswith(prefix):
                    continue
                parts = p[len(prefix) :].split("/")
                if len(parts) > 1:
                    upto = parts[:-1] if recursive else parts[:1]
                    for i in range(1, len(upto) + 1):
                        dirs.add(prefix + "/".join(upto[:i]))
                    if not recursive:
                        continue
                entries.append(self.hub._entry_json(repo, sha, files[p], expand))
            entries += [self.hub._dir_json(repo, sha, d, expand) for d in sorted(dirs)]
            entries.sort(key=lambda e: (e["type"] != "directory", e["path"]))
            return _json(entries)

    def paths_info(self, repo_key: str, revision: str) -> _Response:
        with self.hub._lock:
            repo = self._repo(repo_key)
            sha = self.hub._resolve(repo, revision or "main")
            files = repo.commits[sha].tree
            ctype = self.req.headers.get("Content-Type") or ""
            if "json" in ctype:
                payload = self.req.json() or {}
                paths, expand = payload.get("paths") or [], bool(payload.get("expand"))
            else:
                form = parse_qs(self.req.body.decode(), keep_blank_values=True)
                paths, expand = form.get("paths", []), _truthy((form.get("expand") or ["false"])[0])
            out = []
            for p in paths:
                p = p.strip("/")
                if p in files:
                    out.append(self.hub._entry_json(repo, sha, files[p], expand))
                elif any(f.startswith(p + "/") for f in files):
                    out.append(self.hub._dir_json(repo, sha, p, expand))
            return _json(out)

    # ------------------------------------------------------------------ upload
    def preupload(self, repo_key: str, revision: str) -> _Response:
        with self.hub._lock:
            repo = self._repo(repo_key, write=True)
            sha = self.hub._resolve(repo, revision or "main")
            tree = repo.commits[sha].tree
            payload = self.req.json() or {}
            gitignore = payload.get("gitIgnore")
            if gitignore is None and ".gitignore" in tree:
                gitignore = self.hub._read_entry(tree[".gitignore"]).decode(errors="replace")
            ignore_patterns = [
                line.strip()
                for line in (gitignore or "").splitlines()
                if line.strip() and not line.startswith("#")
            ]
            files = []
            for f in payload.get("files", []):
                path = f["path"]
                sample = base64.b64decode(f.get("sample") or "")
                mode = self.hub._upload_mode(repo, sha, path, int(f.get("size") or 0), sample)
                existing = tree.get(path)
                oid = None
                if existing is not None:
                    oid = existing.lfs_oid if existing.lfs_oid is not None else existing.blob_id
                files.append(
                    {
                        "path": path,
                        "uploadMode": mode,
                        "shouldIgnore": any(_match_attr_pattern(p, path) for p in ignore_patterns),
                        "oid": oid,
                    }
                )
            return _json({"files": files, "commitOid": sha})

    def lfs_batch(self, repo_key: str) -> _Response:
        hub = self.hub
        with hub._lock:
            repo = self._repo(repo_key, write=True)
            payload = self.req.json() or {}
            if payload.get("operation") != "upload":
                raise HubError(400, "Only the 'upload' operation is supported by FakeHub")
            objects = []
            chunk = hub.multipart_chunk_size
            multipart = chunk is not None and "multipart" in (payload.get("transfers") or ["basic"])
            for obj in payload.get("objects", []):
                oid, size = obj.get("oid"), obj.get("size")
                if (
                    not isinstance(oid, str)
                    or not _SHA256.match(oid)
                    or not isinstance(size, int)
                    or size < 0
                ):
                    objects.append(
                        {
                            "oid": str(oid),
                            "size": int(size or 0),
                            "error": {"code": 422, "message": "Invalid oid or size"},
                        }
                    )
                    continue
                if oid in repo.lfs_oids:  # already uploaded to this repo: no actions
                    objects.append({"oid": oid, "size": size})
                    continue
                q = f"repo={quote(repo.key)}&size={size}"
                verify = {
                    "href": f"{hub.endpoint}/_lfs/verify/{oid}?{q}&sig={hub._sign('verify', repo.key, oid)}",
                    "header": {},
                }
                if multipart and size > chunk:
                    nparts = -(-size // chunk)
                    header = {"chunk_size": str(chunk)}
                    for n in range(1, nparts + 1):
                        header[str(n)] = (
                            f"{hub.cdn_base}/_lfs/part/{oid}/{n}?{q}&sig={hub._sign('part', repo.key, oid, str(n))}"
                        )
                    upload = {
                        "href": f"{hub.endpoint}/_lfs/complete/{oid}?{q}&sig={hub._sign('complete', repo.key, oid)}",
                        "header": header,
                    }
                else:
                    upload = {
                        "href": f"{hub.cdn_base}/_lfs/upload/{oid}?{q}&sig={hub._sign('upload', repo.key, oid)}"
                    }
                objects.append(
                    {
                        "oid": oid,
                        "size": size,
                        "authenticated": True,
                        "actions": {"upload": upload, "verify": verify},
                    }
                )
            return _json(
                {
                    "transfer": "multipart" if multipart else "basic",
                    "objects": objects,
                    "hash_algo": "sha256",
                },
                headers={"Content-Type": "application/vnd.git-lfs+json"},
            )

    def _lfs_repo(self, action: str, oid: str, *extra: str) -> _Repo:
        repo_key = self.req.q("repo") or ""
        self.hub._check_sig(self.req.query, action, repo_key, oid, *extra)
        repo = self.hub.repos.get(repo_key)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def lfs_put(self, oid: str) -> _Response:
        data = self.req.body
        with self.hub._lock:
            repo = self._lfs_repo("upload", oid)
        self._store_checked(repo, oid, data)
        return _Response(200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    def _store_checked(self, repo: _Repo, oid: str, data: bytes) -> None:
        expected_size = int(self.req.q("size") or -1)
        if hashlib.sha256(data).hexdigest() != oid or (expected_size >= 0 and len(data) != expected_size):
            raise HubError(400, f"Uploaded content does not match oid {oid} / size {expected_size}")
        with self.hub._lock:
            self.hub._store_lfs(oid, data)
            repo.lfs_oids.add(oid)

    def lfs_put_part(self, oid: str, part: int) -> _Response:
        with self.hub._lock:
            repo = self._lfs_repo("part", oid, str(part))
            self.hub._multipart.setdefault((repo.key, oid), {})[part] = self.req.body
        return _Response(200, b"", {"ETag": f'"{hashlib.md5(self.req.body).hexdigest()}"'})

    def lfs_complete(self, oid: str) -> _Response:
        with self.hub._lock:
            repo = self._lfs_repo("complete", oid)
            parts = self.hub._multipart.get((repo.key, oid), {})
        payload = self.req.json() or {}
        numbers = [p["partNumber"] for p in payload.get("parts", [])]
        if (
            payload.get("oid") != oid
            or numbers != list(range(1, len(numbers) + 1))
            or set(numbers) != set(parts)
        ):
            raise HubError(400, "Invalid multipart completion payload")
        for p in payload["parts"]:
            if p.get("etag") != f'"{hashlib.md5(parts[p["partNumber"]]).hexdigest()}"':
                raise HubError(400, f"ETag mismatch for part {p['partNumber']}")
        self._store_checked(repo, oid, b"".join(parts[n] for n in numbers))
        with self.hub._lock:
            self.hub._multipart.pop((repo.key, oid), None)
        return _json({"oid": oid})

    def lfs_verify(self, oid: str) -> _Response:
        with self.hub._lock:
            repo = self._lfs_repo("verify", oid)
            payload = self.req.json() or {}
            if oid not in repo.lfs_oids or self.hub._lfs_sizes.get(oid) != payload.get("size"):
                raise HubError(404, f"LFS object {oid} not found or wrong size")
            return _json({"oid": oid, "size": payload.get("size")})

    def commit(self, repo_key: str, revision: str) -> _Response:
        hub = self.hub
        lines = [json.loads(line) for line in self.req.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of the commit payload must be the header")
        header = lines[0]["value"]
        create_pr = _truthy(self.req.q("create_pr"))
        with hub._lock:
            repo = self._repo(repo_key, write=True)
            revision = revision or "main"
            parent_commit = header.get("parentCommit")
            pr_num = None
            if create_pr:
                if revision.startswith("refs/pr/"):
                    raise HubError(400, "Cannot open a pull request against a pull request ref")
                base = repo.refs.get(hub._branch_ref(repo, revision))
                start = hub._resolve(repo, parent_commit) if parent_commit else base
                pr_num = repo.next_pr
                ref = f"refs/pr/{pr_num}"
            else:
                ref = hub._branch_ref(repo, revision)
                start = repo.refs[ref]
                if parent_commit and not start.startswith(parent_commit):
                    raise HubError(
                        412, f"A commit has happened since. Head is {start}, parentCommit is {parent_commit}"
                    )
            tree = dict(repo.commits[start].tree)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value") or {}
                path = (value.get("path") or "").strip("/")
                if key == "file":
                    data = (
                        base64.b64decode(value.get("content") or "")
                        if value.get("encoding") == "base64"
                        else (value.get("content") or "").encode()
                    )
                    tree[path] = hub._store_regular(path, data)
                elif key == "lfsFile":
                    oid = value.get("oid")
                    if oid not in hub._lfs_sizes or oid not in repo.lfs_oids:
                        raise HubError(422, f"LFS file {path} ({oid}) has not been uploaded")
                    size = hub._lfs_sizes[oid]
                    if value.get("size") is not None and value["size"] != size:
                        raise HubError(422, f"LFS file {path}: size mismatch")
                    repo.lfs_oids.add(oid)
                    tree[path] = hub._lfs_entry(path, oid, size)
                elif key == "deletedFile":
                    if tree.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif key == "deletedFolder":
                    doomed = [p for p in tree if p.startswith(path + "/")]
                    if not doomed:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in doomed:
                        del tree[p]
                else:
                    raise HubError(400, f"Unknown commit operation: {key}")
            commit = hub._new_commit(
                repo, [start], tree, header.get("summary") or "", header.get("description") or ""
            )
            repo.refs[ref] = commit.sha
            if pr_num is not None:
                repo.next_pr += 1
            pr_url = f"{hub.endpoint}/{repo.url_path}/discussions/{pr_num}" if pr_num is not None else None
            return _json(
                {
                    "success": True,
                    "commitOid": commit.sha,
                    "commitUrl": f"{hub.endpoint}/{repo.url_path}/commit/{commit.sha}",
                    "commitMessage": commit.title,
                    "hookOutput": "",
                    "pullRequestUrl": pr_url,
                }
            )

    # ------------------------------------------------------------------ download
    def resolve(self, repo_key: str, revision: str, path: str) -> _Response:
        hub = self.hub
        with hub._lock:
            repo = self._repo(repo_key)
            sha = hub._resolve(repo, revision)
            entry = repo.commits[sha].tree.get(path)
            if entry is None:
                raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
            if entry.lfs_oid is not None:
                oid = entry.lfs_oid
                name = quote(path.rsplit("/", 1)[-1])
                location = (
                    f"{hub.cdn_base}/_cdn/{oid}?repo={quote(repo.key)}&commit={sha}&name={name}"
                    f"&sig={hub._sign('cdn', repo.key, oid, sha)}"
                )
                return _Response(
                    302,
                    b"",
                    {
                        "Location": location,
                        "X-Repo-Commit": sha,
                        "X-Linked-Etag": f'"{oid}"',
                        "X-Linked-Size": str(entry.size),
                        "ETag": f'"{entry.blob_id}"',
                        "Content-Type": "text/plain; charset=utf-8",
                    },
                )
            data = hub._read_entry(entry)
        return _ranged(
            self.req,
            data,
            {"X-Repo-Commit": sha, "ETag": f'"{entry.blob_id}"', "Content-Type": "text/plain; charset=utf-8"},
        )

    def cdn(self, oid: str) -> _Response:
        hub = self.hub
        repo_key, commit = self.req.q("repo") or "", self.req.q("commit") or ""
        hub._check_sig(self.req.query, "cdn", repo_key, oid, commit)
        with hub._lock:
            if oid not in hub._lfs_sizes:
                raise HubError(404, "NoSuchKey")
            data = hub._lfs_path(oid).read_bytes()
        name = self.req.q("name") or oid
        headers = {
            "ETag": f'"{oid}"',
            "X-Repo-Commit": commit,  # only useful if the client followed the redirect (same host)
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"attachment; filename*=UTF-8''{name}; filename=\"{unquote(name)}\";",
        }
        return _ranged(self.req, data, headers)


def _ranged(req: _Request, data: bytes, headers: dict[str, str]) -> _Response:
    headers = {**headers, "Accept-Ranges": "bytes"}
    rng = req.headers.get("Range")
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", (rng or "").strip())
    if m and (m.group(1) or m.group(2)):
        size = len(data)
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        else:
            start, end = max(0, size - int(m.group(2))), size - 1
        if start >= size or start > end:
            return _Response(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
        return _Response(
            206, data[start : end + 1], {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}
        )
    return _Response(200, data, headers)


# --------------------------------------------------------------------------------------------------
# pytest fixture
# --------------------------------------------------------------------------------------------------

try:
    import pytest as _pytest
except ImportError:  # pragma: no cover
    _pytest = None

if _pytest is not None:

    @_pytest.fixture
    def fake_hub():
        """A fresh, running FakeHub on the port configured by ``configure_hub_env()``.

        Fails the test at teardown if the fake server itself crashed while handling a request.
        """
        hub = start_fake_hub()
        try:
            yield hub
        finally:
            hub.stop()
        if hub.server_errors:
            _pytest.fail("FakeHub internal error(s):\n" + "\n".join(hub.server_errors), pytrace=False)
