"""Resolve model references (Hub id, local folder, architecture name) and push results to the Hub.

Every model hftl loads goes through :func:`resolve_model`, which turns what the user wrote into a
local folder (downloading through the Hub cache when needed) and says which library reads it. One
place to map the Hub's failures to messages that name the model and the way out.

Example:
    >>> ref = resolve_model("timm:resnet18")
    >>> ref.library, ref.source, ref.name
    ('timm', 'arch', 'resnet18')
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from hftl.errors import HubError, ModelNotFoundError, UnsafeWeightsError

logger = logging.getLogger(__name__)

PICKLE_PATTERNS = ["*.bin", "*.pth", "*.pt", "*.pkl", "*.ckpt"]
# Formats we never read: other frameworks' weights and exports only add download time.
FOREIGN_PATTERNS = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "*.tflite", "*.mlmodel", "*.gguf", "onnx/*", "openvino/*"]
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}(/[A-Za-z0-9][\w.\-]{0,95})?$")


@dataclass
class ModelRef:
    """A resolved model reference.

    library: ``timm``, ``transformers`` or ``peft``. source: ``hub``, ``local`` or ``arch`` (no weights).
    name: the repo id, folder or architecture. path: the local folder holding it (None for ``arch``).
    """

    library: str
    source: str
    name: str
    revision: str | None = None
    path: Path | None = None

    def describe(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.name}{rev}" if self.source != "arch" else f"{self.library}:{self.name} (random init)"


def detect_library(folder: Path) -> str:
    """Which library wrote a model folder: ``peft``, ``timm`` or ``transformers``."""
    if (folder / "adapter_config.json").is_file():
        return "peft"
    config = folder / "config.json"
    if not config.is_file():
        raise ModelNotFoundError(
            f"'{folder}' holds no config.json or adapter_config.json, so it is not a model folder in "
            "timm/transformers/peft layout. Point model.id at a folder written by save_pretrained, "
            "timm's save_for_hf or hftl."
        )
    data = json.loads(config.read_text())
    if "model_type" in data:
        return "transformers"
    if "architecture" in data:
        return "timm"
    raise ModelNotFoundError(f"Cannot tell which library wrote '{config}' (no model_type or architecture).")


def check_safe_weights(folder: Path, allow_pickle: bool) -> None:
    """Refuse a folder whose only weights are pickle files unless the user opted in."""
    has_safetensors = any(folder.glob("*.safetensors"))
    pickles = [p.name for pattern in PICKLE_PATTERNS for p in folder.glob(pattern)]
    if pickles and not has_safetensors and not allow_pickle:
        raise UnsafeWeightsError(
            f"'{folder}' holds weights only as pickle ({', '.join(sorted(pickles))}); loading pickle can run "
            "arbitrary code. Convert them to safetensors, or set model.allow_pickle=true if you trust the source."
        )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def download(repo_id: str, revision: str | None = None, allow_pickle: bool = False,
             repo_type: str = "model") -> Path:
    """Download (or find in the Hub cache) a repository snapshot; returns its local folder.

    Honours ``HF_HUB_OFFLINE`` (cache only, no network call) and ``HF_ENDPOINT`` (mirrors).

    Example:
        >>> folder = download("timm/resnet18.a1_in1k")  # doctest: +SKIP
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    ignore = FOREIGN_PATTERNS + ([] if allow_pickle else PICKLE_PATTERNS)
    try:
        return Path(snapshot_download(repo_id, revision=revision, repo_type=repo_type, ignore_patterns=ignore))
    except GatedRepoError as e:
        raise ModelNotFoundError(
            f"'{repo_id}' is gated on the Hub: accept its terms on the model page and log in "
            "(huggingface-cli login or HF_TOKEN)."
        ) from e
    except RepositoryNotFoundError as e:
        raise ModelNotFoundError(
            f"'{repo_id}' does not exist on the Hub (or is private: set HF_TOKEN). Check the id, or pass a "
            "local folder."
        ) from e
    except RevisionNotFoundError as e:
        raise ModelNotFoundError(f"Revision '{revision}' of '{repo_id}' does not exist on the Hub.") from e
    except (LocalEntryNotFoundError, OSError) as e:
        why = "HF_HUB_OFFLINE is set" if _offline() else "the Hub cannot be reached"
        raise ModelNotFoundError(
            f"'{repo_id}' is not in the local Hub cache and {why}. Ways out: pass a local folder as "
            f"model.id; download it once on a machine with internet (huggingface-cli download {repo_id}) and "
            "copy the cache (HF_HOME); or set HF_ENDPOINT to a reachable mirror."
        ) from e


def resolve_model(model_id: str, revision: str | None = None, allow_pickle: bool = False) -> ModelRef:
    """Turn a model reference into a :class:`ModelRef` with a local folder.

    Accepted forms: ``timm:<arch>`` (random init), ``hf-hub:<repo>`` or ``<org>/<name>`` (the Hub),
    a local folder (timm, transformers or peft layout).

    Example:
        >>> resolve_model("timm:vgg11").name
        'vgg11'
    """
    if model_id.startswith("timm:"):
        return ModelRef("timm", "arch", model_id[len("timm:"):])
    local = Path(model_id).expanduser()
    if local.is_dir():
        check_safe_weights(local, allow_pickle)
        return ModelRef(detect_library(local), "local", str(local), path=local)
    if model_id.startswith(("/", "./", "../", "~")) or os.sep in model_id.strip("/").replace("/", "", 1):
        raise ModelNotFoundError(f"Model folder '{model_id}' does not exist. Check the path.")
    repo_id = model_id[len("hf-hub:"):] if model_id.startswith("hf-hub:") else model_id
    if not REPO_ID_RE.match(repo_id):
        raise ModelNotFoundError(
            f"'{model_id}' is neither a local folder, a Hub id (org/name) nor an architecture (timm:resnet18)."
        )
    path = download(repo_id, revision=revision, allow_pickle=allow_pickle)
    check_safe_weights(path, allow_pickle)
    return ModelRef(detect_library(path), "hub", repo_id, revision=revision, path=path)


# ---------------------------------------------------------------------------------------------- push

# What never leaves the machine: resumable state (optimizer, RNG: large and pickled) and caches.
PUSH_IGNORE = ["checkpoints/*", "checkpoints/**", "**/__pycache__/**", "*.tmp", ".tmp*", "logs/**"]


def get_token(token: str | None = None) -> str:
    """The Hub token from the argument, ``HF_TOKEN`` or the login cache; a clear error when none."""
    from huggingface_hub import get_token as hf_get_token

    token = token or hf_get_token()
    if not token:
        raise HubError(
            "No Hugging Face token found. Set HF_TOKEN or run `huggingface-cli login` (nothing was uploaded)."
        )
    return token


def push(output_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
         create_pr: bool = False, token: str | None = None, commit_message: str | None = None) -> str:
    """Push an hftl output folder to the Hub in the layout its library loads; returns the commit URL.

    Example:
        >>> push("outputs/run", "me/resnet18-digits")  # doctest: +SKIP
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    output_dir = Path(output_dir)
    if not REPO_ID_RE.match(repo_id) or "/" not in repo_id:
        raise HubError(f"'{repo_id}' is not a valid Hub repo id: use 'user/name' (letters, digits, -, _, .).")
    weights = list(output_dir.glob("*.safetensors"))
    if not weights:
        raise HubError(f"'{output_dir}' holds no .safetensors weights: train into it first (nothing was uploaded).")
    token = get_token(token)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(output_dir),
            revision=revision,
            create_pr=create_pr,
            ignore_patterns=PUSH_IGNORE,
            commit_message=commit_message or "Upload with hftl",
        )
    except HfHubHTTPError as e:
        # The server's own words, never the request headers (which hold the token).
        raise HubError(f"Push to '{repo_id}' failed: {e}. Nothing partial is committed; run the push again.") from e
    return str(getattr(info, "pr_url", None) or getattr(info, "commit_url", info))
