"""Push hftl results to the Hub, in the layout their library loads, with a model card.

A push is planned and checked entirely on this machine first (:func:`plan_push`), then sent as one
commit (:func:`push`). Resolving a model reference (Hub id, folder, package, state_dict file) is
:mod:`hftl.refs`'s part.

Example:
    >>> sorted(plan_push("outputs/run").files)  # doctest: +SKIP
    ['README.md', 'config.json', 'hftl.json', 'hftl_config.yaml', 'log.jsonl', 'metrics.json', 'model.safetensors']
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from hftl.errors import HubError, ModelNotFoundError
from hftl.refs import detect_library

logger = logging.getLogger(__name__)


# A push is planned and checked entirely on this machine first (repo id, token, weights, card
# metadata), so every mistake a user can make is reported before a single request is sent; the
# upload is then ONE commit, so a failure never leaves a half-pushed model on the Hub, and pushing
# again skips what the server already holds (the client compares hashes), so nothing is duplicated.

# Never uploaded: resumable state (optimizer, RNG: large, and pickled), pickles anywhere, caches,
# hidden/temporary files, trackers' logs, and a study's per-fold records and runs.
PUSH_SKIP_DIRS = {"checkpoints", "__pycache__", "logs", ".git", ".cache"}
PUSH_SKIP_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".tmp", ".lock"}
# Files a push manages in a repo: those a new push lacks are deleted in the same commit, so that
# a repo never mixes two runs (an old adapter_config.json would make loaders read a stale adapter).
MANAGED_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "config.json", "adapter_config.json",
                    "hftl.json", "hftl_config.yaml", "metrics.json", "log.jsonl", "study/*", "merged/*",
                    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                    "vocab.json", "merges.txt", "preprocessor_config.json", "generation_config.json",
                    "ppo-*.zip", "results.json", "replay.gif", "replay.mp4"]


@dataclass
class PushPlan:
    """What a push would upload, decided locally: ``files`` maps paths in the repo to local files."""

    folder: Path
    root: Path
    kind: str  # timm, transformers, peft, or sb3 (an RL agent)
    files: dict
    card: str | None
    meta: dict


def get_token(token: str | None = None) -> str:
    """The Hub token from the argument, ``HF_TOKEN`` or the login cache; a clear error when none.

    The token is only ever handed to ``huggingface_hub``: hftl never prints, logs or writes it.

    Example:
        >>> token = get_token()  # doctest: +SKIP
    """
    from huggingface_hub import get_token as hf_get_token

    token = token or hf_get_token()
    if not token:
        raise HubError(
            "No Hugging Face token found. Set HF_TOKEN, or log in once with `hf auth login` "
            "(huggingface-cli login); nothing was uploaded."
        )
    return token


def check_repo_id(repo_id: str | None) -> str:
    """``repo_id`` if it is a valid ``user/name`` Hub id, else a :class:`HubError` saying why.

    Example:
        >>> check_repo_id("me/resnet18-digits")
        'me/resnet18-digits'
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not repo_id or not isinstance(repo_id, str):
        raise HubError("No Hub repo id given: pass --repo-id user/name (or set hub.repo_id); nothing was uploaded.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(f"'{repo_id}' is not a valid Hub repo id: {e} Use 'user/name'; nothing was uploaded.") from e
    if "/" not in repo_id:
        raise HubError(f"'{repo_id}' has no namespace: use 'user/{repo_id}' (or 'org/{repo_id}'); nothing was uploaded.")
    return repo_id


def check_push_ready(repo_id: str | None, token: str | None = None) -> None:
    """Fail fast (before a training run, before any request) when a push could not start.

    Example:
        >>> check_push_ready("me/resnet18-digits")  # doctest: +SKIP
    """
    check_repo_id(repo_id)
    get_token(token)


def _skipped(rel: Path) -> bool:
    return (any(part in PUSH_SKIP_DIRS or part.startswith(".") for part in rel.parts)
            or rel.suffix in PUSH_SKIP_SUFFIXES)


def _model_files(root: Path, skip_dirs: tuple[str, ...] = ()) -> dict:
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not _skipped(rel) and not (rel.parts and rel.parts[0] in skip_dirs):
            files[rel.as_posix()] = path
    return files


def _check_weights(root: Path, shown: Path) -> str:
    """The library layout of ``root``; a clear error when it holds no loadable safetensors weights."""
    adapter = (root / "adapter_config.json").is_file()
    weights = ["adapter_model.safetensors"] if adapter else \
        [p.name for p in root.glob("*.safetensors")] + [p.name for p in root.glob("*.safetensors.index.json")]
    if not all((root / w).is_file() for w in weights) or not weights:
        pickles = sorted(p.name for p in root.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
                         and not p.name.startswith(".")) if root.is_dir() else []
        why = (f"holds weights only as pickle ({', '.join(pickles)}), which hftl never uploads; save them as "
               "safetensors" if pickles else
               "holds no model weights (model.safetensors or adapter_model.safetensors); train into it first, or "
               "point at a run's output folder")
        raise HubError(f"'{shown}' {why} (nothing was uploaded).")
    try:
        return detect_library(root)
    except ModelNotFoundError as e:
        raise HubError(f"'{shown}' cannot be pushed: {e} (nothing was uploaded).") from e


def plan_push(output_dir: str | Path, merged: bool = False) -> PushPlan:
    """Decide, without any network call, what pushing ``output_dir`` uploads and where.

    A run's folder goes up as it is (its library's layout at the repo root) minus ``checkpoints/``,
    pickles, caches and logs. A study's folder (``study.json`` + ``model/``) puts the winning model
    at the root and ``report.md``, ``study.json`` and the plots under ``study/``. ``merged=True``
    pushes a LoRA run's ``merged/`` model (loads without peft) instead of the adapter. An RL agent's
    folder (:mod:`hftl.rl.outputs`) goes up in SB3's layout: ``ppo-<env>.zip``, ``policy.safetensors``,
    ``config.json``, ``results.json`` and its card.

    Example:
        >>> sorted(plan_push("outputs/run").files)  # doctest: +SKIP
        ['README.md', 'config.json', 'hftl.json', 'hftl_config.yaml', 'log.jsonl', 'metrics.json', 'model.safetensors']
    """
    # hftl.rl.outputs imports neither gymnasium nor SB3: planning a push needs no rl extra
    from hftl.rl.outputs import agent_config, agent_push_files, is_agent_folder, zip_name

    folder = Path(output_dir).expanduser()
    if not folder.is_dir():
        raise HubError(f"Output folder '{folder}' does not exist (nothing was uploaded).")
    study_files: dict = {}
    root = folder
    if (folder / "study.json").is_file():
        root = folder / "model"
        agent = next(iter(sorted(folder.glob("runs/*/seed*"))), None)
        if not root.is_dir() and agent is not None and is_agent_folder(agent):
            raise HubError(f"'{folder}' is an RL study: it keeps one agent per arm and seed, not one model. Push one "
                           f"of them, e.g. `hftl push {agent} user/name` (nothing was uploaded).")
        if not root.is_dir():
            raise HubError(f"The study in '{folder}' saved no model (no winning arm), so there is nothing to push.")
        study_files = {f"study/{p.name}": p for p in sorted(folder.iterdir())
                       if p.is_file() and p.suffix in (".md", ".json", ".png", ".svg", ".csv")}
    card_path = root / "README.md"
    if merged:
        if not (root / "adapter_config.json").is_file() or not (root / "merged").is_dir():
            raise HubError(f"'{root}' holds no merged model: --merged needs a LoRA run trained with "
                           "strategy.merge_lora=true (nothing was uploaded).")
        root = root / "merged"
    if is_agent_folder(root):  # an RL agent (hftl.rl.outputs): SB3's Hub layout, loaded by huggingface_sb3
        kind = "sb3"
        files = agent_push_files(root)
        config = agent_config(root)
        meta = {"library": "stable-baselines3", "zip": zip_name(config["env_id"], config.get("algo", "ppo"))}
    else:
        kind = _check_weights(root, root)
        files = _model_files(root, skip_dirs=("merged",) if kind == "peft" else ())
        files.pop("README.md", None)
        meta_path = root / "hftl.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    files.update(study_files)
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else None
    _refuse_secrets({**files, "README.md": card_path} if card is not None else files)
    return PushPlan(folder, root, kind, files, card, meta)


TEXT_SUFFIXES = {".json", ".yaml", ".yml", ".md", ".txt", ".jsonl", ".csv", ".cfg", ".toml"}
TOKEN_RE = re.compile(r"(hf_[A-Za-z0-9]{30,}|api_org_[A-Za-z0-9]{30,})")


def _refuse_secrets(files: dict) -> None:
    """Refuse a push whose text files hold a token (an older run, or a file the user added by hand).

    An SB3 zip is read member by member (its ``data`` is JSON text, cloudpickled values base64 inside):
    a token put into an agent's settings would be found there, and nothing is unpickled to look.
    """
    import zipfile

    for rel, path in files.items():
        if Path(rel).suffix in TEXT_SUFFIXES and path.stat().st_size < 50 * 2**20:
            texts = [path.read_text(encoding="utf-8", errors="replace")]
        elif Path(rel).suffix == ".zip" and path.stat().st_size < 50 * 2**20 and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                texts = [z.read(m).decode("utf-8", errors="replace") for m in z.infolist() if m.file_size < 50 * 2**20]
        else:
            continue
        if any(TOKEN_RE.search(text) for text in texts):
            raise HubError(f"'{path}' holds what looks like a Hugging Face token; remove it before pushing "
                           "(hftl never writes tokens; nothing was uploaded).")


def push(output_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
         create_pr: bool = False, token: str | None = None, commit_message: str | None = None,
         merged: bool = False, license: str | None = None) -> str:
    """Push an hftl output folder to the Hub in the layout its library loads; returns the commit (or PR) URL.

    timm outputs then load with ``timm.create_model("hf-hub:<repo_id>", pretrained=True)``,
    transformers outputs with ``Auto*.from_pretrained(repo_id)``, LoRA outputs with
    ``PeftModel.from_pretrained`` or ``hftl.load(repo_id)``, RL agents with
    ``PPO.load(huggingface_sb3.load_from_hub(repo_id, "ppo-<env>.zip"))``. ``revision`` names a branch (made from
    main when new); ``create_pr`` opens a pull request instead of committing; ``private`` creates a
    private repo (and refuses to push into an existing public one); ``license`` overrides the card's.
    The model card's "how to use" code is rewritten for ``repo_id`` and ``revision``.

    Everything is checked before the first request: the repo id, the token, the weights and the
    card's metadata (as the Hub would check it).

    Example:
        >>> push("outputs/run", "me/resnet18-digits", private=True)  # doctest: +SKIP
        'https://huggingface.co/me/resnet18-digits/commit/...'
    """
    from hftl.cards import card_for_repo

    check_repo_id(repo_id)
    plan = plan_push(output_dir, merged=merged)
    target = revision or "main"
    card = None
    if plan.card is not None:
        branch = None if target == "main" else target
        usage = None
        if plan.kind == "sb3":
            from hftl.rl.card import usage_block

            usage = usage_block(repo_id, plan.meta["zip"], branch)
        card = card_for_repo(plan.card, repo_id, revision=branch, kind=plan.kind, meta=plan.meta, merged=merged,
                             license=license, usage=usage)  # raises HubError on bad metadata
    else:
        logger.warning("'%s' has no README.md: pushing without a model card", plan.root)
    if plan.kind == "sb3":
        logger.info("'%s' is an SB3 zip, which is a pickle: whoever loads it with PPO.load must trust this repo "
                    "(hftl itself reads the agent's policy.safetensors)", plan.meta["zip"])
    if plan.kind == "peft" and plan.meta.get("base_source") not in (None, "hub"):
        logger.warning("The adapter's base model '%s' is not on the Hub: others cannot load this adapter until "
                       "it is (push the base too, and train from its Hub id)", plan.meta.get("base_model"))
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise HubError("HF_HUB_OFFLINE is set, so nothing can be pushed: unset it (or set it to 0) and push again; "
                       "nothing was uploaded.")
    token = get_token(token)
    return _upload(plan, card, repo_id, token=token, private=private, revision=revision, create_pr=create_pr,
                   message=commit_message or f"Upload {plan.kind} model with hftl")


def _upload(plan: PushPlan, card: str | None, repo_id: str, *, token: str, private: bool, revision: str | None,
            create_pr: bool, message: str) -> str:
    import fnmatch

    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in plan.files.items()]
    if card is not None:
        ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if private and not api.repo_info(repo_id).private:
            raise HubError(f"'{repo_id}' already exists and is public, but a private push was asked for. Make it "
                           "private on the Hub (Settings) or push without --private; nothing was uploaded.")
        if revision and not revision.startswith("refs/"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        existing = api.list_repo_files(repo_id, revision=revision)
        new = {op.path_in_repo for op in ops}
        stale = [f for f in existing if f not in new and any(fnmatch.fnmatch(f, p) for p in MANAGED_PATTERNS)]
        ops += [CommitOperationDelete(path_in_repo=f) for f in stale]
        logger.info("Pushing %d files (%s model) to %s%s%s", len(new), plan.kind, repo_id,
                    f" @ {revision}" if revision else "", " as a pull request" if create_pr else "")
        info = api.create_commit(repo_id, operations=ops, commit_message=message, revision=revision,
                                 create_pr=create_pr)
    except HubError:
        raise
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = (" The token is invalid or cannot write to this namespace: check HF_TOKEN / `hf auth login`."
                if status in (401, 403) else "")
        # The server's own words, never the request headers (which hold the token).
        raise HubError(f"Push to '{repo_id}' failed (HTTP {status}): {_first_line(e)}.{hint} {AGAIN}") from e
    except (RuntimeError, OSError, ValueError) as e:
        cause = f" ({_first_line(e.__cause__)})" if e.__cause__ is not None else ""
        raise HubError(f"Push to '{repo_id}' failed: {_first_line(e)}{cause}. {AGAIN}") from e
    except Exception as e:  # httpx transport errors (connection refused, dropped) have no common HF base class
        if not type(e).__module__.startswith(("httpx", "httpcore", "h11", "h2", "urllib3", "requests", "anyio")):
            raise
        raise HubError(f"Push to '{repo_id}' failed: the Hub could not be reached ({type(e).__name__}: "
                       f"{_first_line(e)}). {AGAIN}") from e
    url = str(getattr(info, "pr_url", None) or getattr(info, "commit_url", None) or info)
    logger.info("Pushed to %s", url)
    return url


AGAIN = ("A push is one commit, so the repo holds all of it or none of it: run the push again (files the "
         "server already holds are not sent twice).")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
