"""Tests proving that the real ``huggingface_hub`` client works against ``tests/hub_server.py``.

The environment (HF_ENDPOINT, HF_HUB_DISABLE_XET, HF_HOME, ...) is configured at import time,
before ``huggingface_hub`` is imported (it reads those settings once, at import).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hub_server import (  # noqa: E402
    DEFAULT_READ_TOKEN,
    FakeHub,
    configure_hub_env,
    fake_hub,  # noqa: F401  (pytest fixture)
    start_fake_hub,
)

configure_hub_env()  # must run before huggingface_hub is imported (no-op if conftest already did it)

import pytest  # noqa: E402
from huggingface_hub import (  # noqa: E402
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (  # noqa: E402
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

# --------------------------------------------------------------------------------------------------
# helpers / fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def hub(fake_hub: FakeHub) -> FakeHub:  # noqa: F811
    return fake_hub


@pytest.fixture
def api(hub: FakeHub) -> HfApi:
    return HfApi(token=hub.token)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "hf-cache"


def make_safetensors(path: Path, n_floats: int, seed: int = 0) -> bytes:
    """Write a valid safetensors file holding one float32 tensor; return its bytes."""
    data = bytes((i * 31 + seed * 7) % 251 for i in range(n_floats * 4))
    header = json.dumps(
        {"weight": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, len(data)]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    content = struct.pack("<Q", len(header)) + header + data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return content


def make_model_folder(root: Path) -> dict[str, bytes]:
    files = {
        "config.json": json.dumps({"model_type": "bert", "hidden_size": 8}).encode(),
        "README.md": b"---\nlicense: mit\ntags:\n- test\n---\n# Tiny model\n",
        "tokenizer/vocab.txt": b"[PAD]\n[UNK]\nhello\nworld\n",
    }
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    files["model.safetensors"] = make_safetensors(
        root / "model.safetensors", 300_000
    )  # ~1.2 MB, LFS by extension
    return files


def successful(hub: FakeHub, kind: str) -> int:
    return len(hub.requests_of(kind, status=200))


# --------------------------------------------------------------------------------------------------
# environment / account
# --------------------------------------------------------------------------------------------------


def test_client_is_configured_for_the_fake_hub(hub: FakeHub) -> None:
    assert constants.ENDPOINT == hub.endpoint == os.environ["HF_ENDPOINT"]
    assert constants.HF_HUB_DISABLE_XET is True
    home = Path(os.environ["HF_HOME"]).resolve()
    assert Path(constants.HF_HUB_CACHE).resolve().is_relative_to(home)
    assert not Path(constants.HF_HUB_CACHE).resolve().is_relative_to(Path.home() / ".cache")
    assert not constants.HF_HUB_OFFLINE


def test_whoami(hub: FakeHub, api: HfApi) -> None:
    me = api.whoami()
    assert me["name"] == hub.username
    assert me["auth"]["accessToken"]["role"] == "write"
    assert HfApi(token=DEFAULT_READ_TOKEN).whoami()["auth"]["accessToken"]["role"] == "read"
    with pytest.raises(HfHubHTTPError) as exc:
        HfApi(token="hf_not_a_valid_token").whoami()
    assert exc.value.response.status_code == 401


# --------------------------------------------------------------------------------------------------
# repos, upload, download
# --------------------------------------------------------------------------------------------------


def test_create_repo_private_flag_and_exist_ok(hub: FakeHub, api: HfApi) -> None:
    url = api.create_repo("tiny-model", private=True)
    assert url.repo_id == f"{hub.username}/tiny-model"
    assert url.endpoint == hub.endpoint
    info = api.model_info(url.repo_id)
    assert info.private is True
    assert len(info.sha) == 40 and int(info.sha, 16) >= 0
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]  # like the Hub: initial commit

    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo("tiny-model")
    assert exc.value.response.status_code == 409
    assert api.create_repo("tiny-model", exist_ok=True).repo_id == url.repo_id

    public = api.create_repo("some-org/public-model")
    assert api.repo_info(public.repo_id).private is False
    assert api.repo_exists(public.repo_id) and not api.repo_exists("some-org/nope")
    api.update_repo_settings(public.repo_id, private=True)
    assert api.model_info(public.repo_id).private is True


def test_upload_folder_and_download_back(hub: FakeHub, api: HfApi, tmp_path: Path, cache_dir: Path) -> None:
    repo_id = api.create_repo("roundtrip").repo_id
    files = make_model_folder(tmp_path / "model")
    commit = api.upload_folder(folder_path=tmp_path / "model", repo_id=repo_id, commit_message="Add model")
    assert len(commit.oid) == 40 and commit.pr_url is None

    # Server side: safetensors went through the LFS batch route, text files were committed inline.
    [oid] = hub.lfs_objects(repo_id)
    assert successful(hub, "lfs_batch") == 1 and successful(hub, "lfs_upload") == 1
    assert successful(hub, "lfs_verify") == 1 and successful(hub, "preupload") == 1

    assert sorted(api.list_repo_files(repo_id)) == sorted([".gitattributes", *files])
    tree = {e.path: e for e in api.list_repo_tree(repo_id, recursive=True, expand=True)}
    assert tree["model.safetensors"].lfs is not None and tree["model.safetensors"].lfs.sha256 == oid
    assert tree["model.safetensors"].size == len(files["model.safetensors"])
    assert tree["config.json"].lfs is None
    assert tree["tokenizer"].tree_id and tree["tokenizer/vocab.txt"].last_commit.oid == commit.oid
    top = {e.path for e in api.list_repo_tree(repo_id)}
    assert top == {".gitattributes", "config.json", "README.md", "model.safetensors", "tokenizer"}
    infos = api.get_paths_info(repo_id, ["config.json", "tokenizer", "missing.txt"])
    assert sorted(i.path for i in infos) == ["config.json", "tokenizer"]

    info = api.model_info(repo_id, files_metadata=True)
    assert info.sha == commit.oid
    assert {s.rfilename: s.lfs is not None for s in info.siblings}["model.safetensors"]

    # hf_hub_download by id, default revision / branch name / full sha / short sha.
    for revision in (None, "main", commit.oid, commit.oid[:8]):
        for name, content in files.items():
            path = hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir)
            assert Path(path).read_bytes() == content, (revision, name)
    # The LFS file came from the "CDN" redirect, the others from /resolve.
    assert hub.requests_of("cdn", status=200)

    snapshot = Path(snapshot_download(repo_id, revision=commit.oid, cache_dir=cache_dir))
    assert snapshot.name == commit.oid
    for name, content in files.items():
        assert (snapshot / name).read_bytes() == content
    local = Path(snapshot_download(repo_id, local_dir=tmp_path / "local", cache_dir=cache_dir))
    assert (local / "model.safetensors").read_bytes() == files["model.safetensors"]

    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "nope.bin", cache_dir=cache_dir)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "config.json", revision="no-such-branch", cache_dir=cache_dir)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{hub.username}/missing-repo", "config.json", cache_dir=cache_dir)
    assert hub.server_errors == []


def test_upload_file_routing_and_delete(hub: FakeHub, api: HfApi, tmp_path: Path, cache_dir: Path) -> None:
    repo_id = api.create_repo("routing").repo_id
    big_text = (b"0123456789abcdef" * 65536) * 11  # 11 MiB of text: LFS because of its size
    (tmp_path / "big.txt").write_bytes(big_text)
    api.upload_file(path_or_fileobj=tmp_path / "big.txt", path_in_repo="data/big.txt", repo_id=repo_id)
    api.upload_file(
        path_or_fileobj=b"\x00\x01binary", path_in_repo="blob.dat", repo_id=repo_id
    )  # binary => LFS
    api.upload_file(path_or_fileobj=b"small text", path_in_repo="notes.md", repo_id=repo_id)
    tree = {e.path: e for e in api.list_repo_tree(repo_id, recursive=True) if hasattr(e, "lfs")}
    assert tree["data/big.txt"].lfs is not None and tree["blob.dat"].lfs is not None
    assert tree["notes.md"].lfs is None
    assert Path(hf_hub_download(repo_id, "data/big.txt", cache_dir=cache_dir)).read_bytes() == big_text

    # Re-uploading identical content is a no-op (no new commit), deleting files works.
    head = hub.head_commit(repo_id)
    api.upload_file(path_or_fileobj=b"small text", path_in_repo="notes.md", repo_id=repo_id)
    assert hub.head_commit(repo_id) == head
    api.create_commit(
        repo_id,
        operations=[CommitOperationDelete("notes.md"), CommitOperationDelete("data/", is_folder=True)],
        commit_message="cleanup",
    )
    assert sorted(api.list_repo_files(repo_id)) == [".gitattributes", "blob.dat"]
    assert [c.title for c in api.list_repo_commits(repo_id)][:2] == [
        "cleanup",
        "Upload notes.md with huggingface_hub",
    ]


def test_multipart_lfs_upload(tmp_path: Path, cache_dir: Path) -> None:
    with start_fake_hub(multipart_chunk_size=1024 * 1024) as hub:
        api = HfApi(token=hub.token)
        repo_id = api.create_repo("multipart").repo_id
        content = make_safetensors(tmp_path / "model.safetensors", 700_000)  # 2.8 MB -> 3 parts
        api.upload_file(
            path_or_fileobj=tmp_path / "model.safetensors", path_in_repo="model.safetensors", repo_id=repo_id
        )
        assert successful(hub, "lfs_upload") == 3 and successful(hub, "lfs_complete") == 1
        assert (
            Path(hf_hub_download(repo_id, "model.safetensors", cache_dir=cache_dir)).read_bytes() == content
        )


# --------------------------------------------------------------------------------------------------
# branches, tags, pull requests
# --------------------------------------------------------------------------------------------------


def test_branch_tag_and_revision_downloads(hub: FakeHub, api: HfApi, tmp_path: Path, cache_dir: Path) -> None:
    repo_id = api.create_repo("branches").repo_id
    main_commit = api.upload_file(path_or_fileobj=b"v1", path_in_repo="version.txt", repo_id=repo_id)
    api.create_branch(repo_id, branch="dev")
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_branch(repo_id, branch="dev")
    assert exc.value.response.status_code == 409
    api.create_branch(repo_id, branch="dev", exist_ok=True)

    weights = make_safetensors(tmp_path / "w.safetensors", 10_000, seed=3)
    dev_commit = api.create_commit(
        repo_id,
        operations=[
            CommitOperationAdd("version.txt", b"v2-dev"),
            CommitOperationAdd("adapter_model.safetensors", tmp_path / "w.safetensors"),
        ],
        commit_message="dev changes",
        revision="dev",
    )
    refs = api.list_repo_refs(repo_id)
    branches = {b.name: b.target_commit for b in refs.branches}
    assert branches == {"main": main_commit.oid, "dev": dev_commit.oid}

    assert sorted(api.list_repo_files(repo_id, revision="dev")) == [
        ".gitattributes",
        "adapter_model.safetensors",
        "version.txt",
    ]
    assert "adapter_model.safetensors" not in api.list_repo_files(repo_id)
    assert api.model_info(repo_id, revision="dev").sha == dev_commit.oid

    def read(name: str, revision: str | None) -> bytes:
        return Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir)).read_bytes()

    assert read("version.txt", None) == b"v1"
    assert read("version.txt", "dev") == b"v2-dev"
    assert read("version.txt", main_commit.oid) == b"v1"
    assert read("adapter_model.safetensors", "dev") == weights
    with pytest.raises(EntryNotFoundError):
        read("adapter_model.safetensors", "main")

    snap = Path(snapshot_download(repo_id, revision="dev", cache_dir=cache_dir))
    assert snap.name == dev_commit.oid and (snap / "version.txt").read_bytes() == b"v2-dev"
    assert (
        Path(cache_dir) / f"models--{repo_id.replace('/', '--')}" / "refs" / "dev"
    ).read_text() == dev_commit.oid

    # Branch from a given revision, tags.
    api.create_branch(repo_id, branch="from-v1", revision=main_commit.oid)
    assert read("version.txt", "from-v1") == b"v1"
    api.create_tag(repo_id, tag="v2", revision="dev")
    assert {t.name: t.target_commit for t in api.list_repo_refs(repo_id).tags} == {"v2": dev_commit.oid}
    assert read("version.txt", "v2") == b"v2-dev"
    with pytest.raises(HfHubHTTPError):  # commits go to branches only
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id, revision="v2")

    api.delete_branch(repo_id, branch="from-v1")
    assert {b.name for b in api.list_repo_refs(repo_id).branches} == {"main", "dev"}
    assert [c.commit_id for c in api.list_repo_commits(repo_id, revision="dev")][:2] == [
        dev_commit.oid,
        main_commit.oid,
    ]


def test_pull_requests(hub: FakeHub, api: HfApi, cache_dir: Path) -> None:
    repo_id = api.create_repo("prs").repo_id
    base = api.upload_file(path_or_fileobj=b"base", path_in_repo="file.txt", repo_id=repo_id)

    pr = api.create_commit(
        repo_id,
        operations=[CommitOperationAdd("file.txt", b"proposed")],
        commit_message="PR 1",
        create_pr=True,
    )
    assert pr.pr_revision == "refs/pr/1" and pr.pr_num == 1
    assert pr.pr_url == f"{hub.endpoint}/{repo_id}/discussions/1"
    assert hub.head_commit(repo_id) == base.oid  # main untouched

    pr2 = api.upload_file(path_or_fileobj=b"other", path_in_repo="other.txt", repo_id=repo_id, create_pr=True)
    assert pr2.pr_revision == "refs/pr/2"

    # Push a second commit onto PR 1.
    follow_up = api.upload_file(
        path_or_fileobj=b"more", path_in_repo="more.txt", repo_id=repo_id, revision=pr.pr_revision
    )
    refs = api.list_repo_refs(repo_id, include_pull_requests=True)
    assert {p.ref: p.target_commit for p in refs.pull_requests} == {
        "refs/pr/1": follow_up.oid,
        "refs/pr/2": pr2.oid,
    }
    assert api.list_repo_refs(repo_id).pull_requests is None

    def read(name: str, revision: str) -> bytes:
        return Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir)).read_bytes()

    assert read("file.txt", "refs/pr/1") == b"proposed"
    assert read("more.txt", "refs/pr/1") == b"more"
    assert read("file.txt", "main") == b"base"
    assert sorted(api.list_repo_files(repo_id, revision="refs/pr/2")) == [
        ".gitattributes",
        "file.txt",
        "other.txt",
    ]
    snap = Path(snapshot_download(repo_id, revision="refs/pr/1", cache_dir=cache_dir))
    assert (snap / "file.txt").read_bytes() == b"proposed"


# --------------------------------------------------------------------------------------------------
# auth
# --------------------------------------------------------------------------------------------------


def test_private_repo_requires_token(hub: FakeHub, api: HfApi, tmp_path: Path, cache_dir: Path) -> None:
    repo_id = api.create_repo("secret", private=True).repo_id
    files = make_model_folder(tmp_path / "model")
    api.upload_folder(folder_path=tmp_path / "model", repo_id=repo_id)

    anonymous = HfApi(token=False)
    with pytest.raises(RepositoryNotFoundError) as exc:
        anonymous.model_info(repo_id)
    assert exc.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):
        anonymous.list_repo_files(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id, "config.json", token=False, cache_dir=cache_dir)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download(repo_id, token=False, cache_dir=cache_dir)

    # With the token everything works, LFS included (the CDN URL is signed, no auth header needed).
    for name, content in files.items():
        path = hf_hub_download(repo_id, name, token=hub.token, cache_dir=cache_dir)
        assert Path(path).read_bytes() == content
    snap = Path(snapshot_download(repo_id, token=hub.token, cache_dir=tmp_path / "other-cache"))
    assert (snap / "model.safetensors").read_bytes() == files["model.safetensors"]

    # A read-only token can read the private repo but not write to it.
    reader = HfApi(token=DEFAULT_READ_TOKEN)
    assert "config.json" in reader.list_repo_files(repo_id)
    with pytest.raises(HfHubHTTPError) as exc:
        reader.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert exc.value.response.status_code == 403


def test_write_endpoints_need_a_token(hub: FakeHub, api: HfApi, cache_dir: Path) -> None:
    repo_id = api.create_repo("public-model").repo_id
    api.upload_file(path_or_fileobj=b"hello", path_in_repo="hello.txt", repo_id=repo_id)
    anonymous = HfApi(token=False)

    # Public reads work without a token.
    assert anonymous.model_info(repo_id).private is False
    assert "hello.txt" in anonymous.list_repo_files(repo_id)
    assert (
        Path(hf_hub_download(repo_id, "hello.txt", token=False, cache_dir=cache_dir)).read_bytes() == b"hello"
    )

    writes = [
        lambda a: a.create_repo("another"),
        lambda a: a.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id),
        lambda a: a.upload_file(path_or_fileobj=b"\x00" * 10, path_in_repo="x.bin", repo_id=repo_id),
        lambda a: a.create_branch(repo_id, branch="dev"),
        lambda a: a.create_tag(repo_id, tag="v1"),
    ]
    for write in writes:
        with pytest.raises(HfHubHTTPError) as exc:
            write(anonymous)
        assert exc.value.response.status_code == 401
    # An unknown token is rejected everywhere, reads included (like the Hub).
    with pytest.raises(HfHubHTTPError) as exc:
        HfApi(token="hf_wrong").model_info(repo_id)
    assert exc.value.response.status_code == 401
    assert [b.name for b in api.list_repo_refs(repo_id).branches] == ["main"]
    assert len(hub.commit_history(repo_id)) == 2


# --------------------------------------------------------------------------------------------------
# failure injection
# --------------------------------------------------------------------------------------------------


def test_commit_failure_then_retry_has_no_duplicates(hub: FakeHub, api: HfApi, tmp_path: Path) -> None:
    repo_id = api.create_repo("interrupted-commit").repo_id
    files = make_model_folder(tmp_path / "model")
    rule = hub.fail_next("commit")  # POST /commit is not retried by the client

    with pytest.raises(HfHubHTTPError) as exc:
        api.upload_folder(folder_path=tmp_path / "model", repo_id=repo_id)
    assert exc.value.response.status_code == 500 and rule.triggered == 1
    assert api.list_repo_files(repo_id) == [".gitattributes"]  # nothing committed...
    assert len(hub.lfs_objects(repo_id)) == 1  # ...but the LFS object was uploaded

    api.upload_folder(folder_path=tmp_path / "model", repo_id=repo_id)
    assert successful(hub, "lfs_upload") == 1  # not uploaded again on retry
    files_on_hub = api.list_repo_files(repo_id)
    assert sorted(files_on_hub) == sorted({".gitattributes", *files}) and len(files_on_hub) == len(
        set(files_on_hub)
    )
    assert len(hub.commit_history(repo_id)) == 2  # initial commit + exactly one upload commit


def test_lfs_upload_failure_then_retry_has_no_duplicates(hub: FakeHub, api: HfApi, tmp_path: Path) -> None:
    repo_id = api.create_repo("interrupted-lfs").repo_id
    folder = tmp_path / "sharded"
    shards = {
        f"model-0000{i}-of-00003.safetensors": make_safetensors(
            folder / f"model-0000{i}-of-00003.safetensors", 50_000, seed=i
        )
        for i in (1, 2, 3)
    }
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"weight": "model-00001-of-00003.safetensors"}})
    )
    # Fail the 2nd LFS PUT with a status the client does not retry (5xx would be retried, see below).
    rule = hub.fail_next("lfs_upload", nth=2, status=403, message="Request has expired")

    with pytest.raises(Exception, match="Error while uploading"):
        api.upload_folder(folder_path=folder, repo_id=repo_id)
    assert rule.triggered == 1
    assert api.list_repo_files(repo_id) == [".gitattributes"]
    uploaded_first = successful(hub, "lfs_upload")
    assert uploaded_first == len(hub.lfs_objects(repo_id)) == 2

    api.upload_folder(folder_path=folder, repo_id=repo_id)
    assert successful(hub, "lfs_upload") == 3  # each object uploaded exactly once overall
    assert hub.lfs_objects(repo_id) == hub.lfs_objects()
    files_on_hub = api.list_repo_files(repo_id)
    assert sorted(files_on_hub) == sorted([".gitattributes", "model.safetensors.index.json", *shards])
    assert len(hub.commit_history(repo_id)) == 2
    for name, content in shards.items():
        assert hub.read_file(repo_id, name) == content


def test_transient_500_on_lfs_upload_is_retried_by_the_client(
    hub: FakeHub, api: HfApi, tmp_path: Path
) -> None:
    repo_id = api.create_repo("transient").repo_id
    content = make_safetensors(tmp_path / "model.safetensors", 1000)
    rule = hub.fail_next("lfs_upload", status=500)
    api.upload_file(
        path_or_fileobj=tmp_path / "model.safetensors", path_in_repo="model.safetensors", repo_id=repo_id
    )
    assert rule.triggered == 1
    assert [r.status for r in hub.requests_of("lfs_upload")] == [500, 200]
    assert hub.read_file(repo_id, "model.safetensors") == content


def test_lost_commit_response_then_retry_is_a_noop(hub: FakeHub, api: HfApi, tmp_path: Path) -> None:
    repo_id = api.create_repo("lost-response").repo_id
    make_model_folder(tmp_path / "model")
    hub.fail_next("commit", status=502, when="after")  # commit applied, answer lost
    with pytest.raises(HfHubHTTPError):
        api.upload_folder(folder_path=tmp_path / "model", repo_id=repo_id)
    assert len(hub.commit_history(repo_id)) == 2
    api.upload_folder(folder_path=tmp_path / "model", repo_id=repo_id)  # nothing changed => no new commit
    assert len(hub.commit_history(repo_id)) == 2


def test_dropped_connection_on_commit(hub: FakeHub, api: HfApi) -> None:
    repo_id = api.create_repo("dropped").repo_id
    hub.fail_next("commit", drop_connection=True)
    with pytest.raises(Exception, match="disconnected"):  # httpx2.RemoteProtocolError, not retried on /commit
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert hub.read_file(repo_id, "x.txt") == b"x"


# --------------------------------------------------------------------------------------------------
# import order
# --------------------------------------------------------------------------------------------------


def test_late_configuration_patches_an_already_imported_client(tmp_path: Path) -> None:
    """If huggingface_hub is imported before configure_hub_env(), the loaded client is patched."""
    script = textwrap.dedent(
        f"""
        import os, sys, warnings
        for k in list(os.environ):
            if k.startswith(("HF_", "HFTL_")):
                del os.environ[k]
        os.environ["HF_HOME"] = {str(tmp_path / "wrong-home")!r}
        import huggingface_hub
        from huggingface_hub import HfApi  # imported too early: points at huggingface.co
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        from hub_server import configure_hub_env, start_fake_hub
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            configure_hub_env()
        assert any("patching" in str(w.message) for w in caught)
        from huggingface_hub import HfApi, hf_hub_download, constants
        with start_fake_hub() as hub:
            assert constants.ENDPOINT == hub.endpoint
            repo = huggingface_hub.create_repo("late", token=hub.token).repo_id
            HfApi(token=hub.token).upload_file(path_or_fileobj=b"\\x00data", path_in_repo="w.bin", repo_id=repo)
            path = hf_hub_download(repo, "w.bin", token=hub.token)
            assert open(path, "rb").read() == b"\\x00data"
            assert path.startswith(os.environ["HF_HOME"]), path
        print("OK")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")
