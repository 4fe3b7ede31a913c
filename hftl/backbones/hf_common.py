"""What every transformers adapter shares, whatever the modality (text, audio).

:class:`TransformersModel` holds an ``AutoModelFor...`` (or its peft wrapper) and gives it hftl's
interface: the head (the final projection outside the pretrained backbone), layer groups from the
input up, default LoRA targets, ``save_pretrained`` saving and a weights fingerprint. The text and
audio adapters add their own preprocessing (a tokenizer, a feature extractor) on top.

Example:
    >>> group_parameter_names(["emb.w", "enc.layer.0.w", "pooler.w", "fc.w"], {"fc.w"})
    [['emb.w'], ['enc.layer.0.w'], ['pooler.w']]
"""

from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from hftl.backbones.base import TransferModel
from hftl.errors import ConfigError, ModelNotFoundError
from hftl.refs import ModelRef

# Fallback LoRA targets by module-name suffix, for model types peft's table does not know.
ATTENTION_NAMES = ("query", "value", "q_proj", "v_proj", "q_lin", "v_lin", "c_attn", "query_key_value", "Wqkv",
                   "qkv_proj", "query_proj", "value_proj")


def remote_kwargs(trust_remote_code: bool) -> dict:
    """``trust_remote_code`` passed explicitly, always: left unset, transformers asks on a terminal whether to
    run a folder's code (a 'y' would run it although the user's config said no)."""
    return {"trust_remote_code": bool(trust_remote_code)}


def remote_code_error(name: str, error: Exception) -> ConfigError | None:
    """The one-line refusal for a model that needs its own Python code, or None for other errors."""
    if "trust_remote_code" not in str(error):
        return None
    return ConfigError(f"'{name}' needs to run Python code shipped with the model (an auto_map in its config), and "
                       "hftl never runs a model folder's code on its own. If you trust its source, set "
                       "model.trust_remote_code=true (hftl predict/eval: --trust-remote-code).")


@contextmanager
def refuse_remote_code(name: str):
    """Turn transformers' 'pass trust_remote_code=True' ValueError into hftl's one-line refusal."""
    try:
        yield
    except ValueError as e:
        refusal = remote_code_error(name, e)
        if refusal is None:
            raise
        raise refusal from e


def load_preprocessing(auto, folder: str | Path, present: bool, what: str, files: str,
                       trust_remote_code: bool = False, name: str | None = None):
    """A tokenizer, feature extractor or image processor saved in a model folder (``auto.from_pretrained``).

    ``present`` says whether its files are there (``files`` names them in the error): transformers would
    otherwise build an empty one, or fail deep inside; a missing or unreadable one is a clear error.
    """
    folder = Path(folder)
    name = name or str(folder)
    if not present:
        raise ModelNotFoundError(f"'{name}' has no {what} ({files} in {folder}). Save the {what} next to the weights "
                                 "(save_pretrained(folder)) or copy its files there from the source model.")
    try:
        return auto.from_pretrained(str(folder), **remote_kwargs(trust_remote_code))
    except (OSError, ValueError, TypeError) as e:
        raise remote_code_error(name, e) or ModelNotFoundError(f"The {what} in '{name}' could not be loaded: {e}") from e


def unwrap_peft(net: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (or ``net`` itself)."""
    get_base = getattr(net, "get_base_model", None)
    return get_base() if callable(get_base) and hasattr(net, "peft_config") else net


def config_kwargs(kwargs: dict) -> tuple[bool, dict]:
    kwargs = dict(kwargs)
    trust = bool(kwargs.pop("trust_remote_code", False))
    kwargs.pop("image_size", None)
    return trust, kwargs


def from_pretrained_or_config(auto, ref: ModelRef, config, pretrained: bool, trust: bool) -> tuple[nn.Module, set]:
    """Pretrained weights (and the names the checkpoint lacked), or the same architecture randomly
    initialised from its config (scratch)."""
    try:
        if not pretrained:
            return auto.from_config(config, **remote_kwargs(trust)), set()
        # ignore_mismatched_sizes: a source model with another head size gets a fresh head, as timm does.
        net, info = auto.from_pretrained(str(ref.path), config=config, dtype=torch.float32,
                                         ignore_mismatched_sizes=True, output_loading_info=True, **remote_kwargs(trust))
        mismatched = {k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ())}
        return net, set(info.get("missing_keys", ())) | mismatched
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise ConfigError(f"'{ref.describe()}' cannot be loaded as {auto.__name__}: {e}") from e
        refusal = remote_code_error(ref.describe(), e)
        if refusal is None:
            raise
        raise refusal from e
    except OSError as e:
        raise ModelNotFoundError(f"The weights of '{ref.describe()}' could not be loaded: {e}") from e


def new_modules(net: nn.Module, missing: set[str]) -> list[str]:
    """Modules whose own parameters the checkpoint lacked (randomly initialised when loaded).

    The output embeddings (tied to the input ones) and modules holding them are left out: copying
    them would defeat LoRA, and their missing biases start at zero, the same on every load.

    Example:
        >>> new_modules(bert_for_classification, {"bert.pooler.dense.weight"})  # doctest: +SKIP
        ['bert.pooler.dense']
    """
    out = net.get_output_embeddings() if hasattr(net, "get_output_embeddings") else None
    owners = {key.rsplit(".", 1)[0] for key in missing if "." in key}
    return [name for name, module in net.named_modules()
            if name in owners and (out is None or all(sub is not out for sub in module.modules()))]


def group_parameter_names(names: list[str], head: set[str], layer_pattern: str = r"\.(\d+)\.") -> list[list[str]]:
    """Embeddings, each numbered layer, then what sits above the layers; ``head`` excluded.

    A name's first numeric component is its layer (``bert.encoder.layer.3.``, ``transformer.h.3.``);
    un-numbered names go below the layers when they hold embeddings or come before the first layer,
    above them otherwise (poolers, final norms, a classification head's dense layer).

    Example:
        >>> group_parameter_names(["emb.w", "enc.layer.0.w", "enc.layer.1.w", "pooler.w", "fc.w"], {"fc.w"})
        [['emb.w'], ['enc.layer.0.w'], ['enc.layer.1.w'], ['pooler.w']]
    """
    bottom, top, layers = [], [], {}
    seen_layer = False
    for name in names:
        if name in head:
            continue
        match = re.search(layer_pattern, f".{name}")
        if match:
            layers.setdefault(int(match.group(1)), []).append(name)
            seen_layer = True
        elif "embed" in name or not seen_layer:
            bottom.append(name)
        else:
            top.append(name)
    groups = [bottom] + [layers[i] for i in sorted(layers)] + [top]
    return [g for g in groups if g]


def head_input(model, batch: dict) -> torch.Tensor:
    """Run ``model.net`` on the batch and return what its head received (captured by a forward pre-hook)."""
    captured = {}

    def grab(module, args):
        captured["x"] = args[0]

    handle = model.head.register_forward_pre_hook(grab)
    try:
        model.net(**model._inputs(batch))
    finally:
        handle.remove()
    return captured["x"]


class TransformersModel(TransferModel):
    """A transformers model (``net``, maybe peft-wrapped) with hftl's interface; subclasses add preprocessing.

    Subclasses set ``modality``, implement ``input_keys`` and ``save_preprocessing``, and may
    override ``_find_head`` (default: the last ``nn.Linear`` outside the pretrained backbone).
    """

    library = "transformers"
    # Where a parameter name says which layer it is in (its first number, unless a subclass narrows it).
    layer_pattern = r"\.(\d+)\."

    def __init__(self, net: nn.Module, label_names: list[str] | None = None):
        super().__init__(net, label_names)
        # Randomly initialised on load (absent from the checkpoint): LoRA trains and saves them in full,
        # or a reloaded adapter would start them from a different random draw.
        self.new_modules: list[str] = []
        self._head_path = self._find_head()

    @property
    def inner(self) -> nn.Module:
        """The transformers model, with any peft wrapper removed."""
        return unwrap_peft(self.net)

    def _find_head(self) -> str:
        # The final projection: the last Linear outside the pretrained backbone.
        inner = self.inner
        prefix = getattr(inner, "base_model_prefix", "")
        candidates = [n for n, m in inner.named_modules()
                      if isinstance(m, nn.Linear) and n and n.split(".")[0] != prefix]
        if not candidates:
            raise ConfigError(f"Cannot find the classification layer of {type(inner).__name__}.")
        return candidates[-1]

    @property
    def head_name(self) -> str:
        return self._head_path

    @property
    def head(self) -> nn.Module:
        # getattr, not get_submodule: peft's ModulesToSaveWrapper forwards attributes to the trained copy.
        module = self.inner
        for part in self._head_path.split("."):
            module = getattr(module, part)
        return module

    @property
    def num_features(self) -> int:
        head = self.head
        return head.in_features if hasattr(head, "in_features") else self.inner.config.hidden_size

    def _inputs(self, batch: dict) -> dict:
        return {k: batch[k] for k in self.input_keys() if k in batch}

    def head_parameter_names(self) -> list[str]:
        # A head tied to the input embeddings (GPT-2's lm_head) is listed once, under the embeddings.
        named = {n for n, _ in self.net.named_parameters()}
        return [n for n in (f"{self.head_name}.{p}" for p, _ in self.head.named_parameters()) if n in named]

    def layer_groups(self) -> list[list[str]]:
        names = [n for n, _ in self.net.named_parameters()]
        return group_parameter_names(names, set(self.head_parameter_names()), self.layer_pattern)

    def default_lora_targets(self) -> list[str]:
        """peft's per-architecture table (query/value for BERT-likes, c_attn for GPT-2, q/v_proj ...)."""
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as TABLE

        model_type = getattr(self.inner.config, "model_type", "")
        if model_type in TABLE:
            return list(TABLE[model_type])
        found = sorted({name.rsplit(".", 1)[-1] for name, _ in self.inner.named_modules()
                        if name.rsplit(".", 1)[-1] in ATTENTION_NAMES})
        if found:
            return found
        head = self.head_name
        return [n for n, m in self.inner.named_modules()
                if isinstance(m, nn.Linear) and not (n == head or n.startswith(head + "."))]

    def _fan_in_fan_out(self) -> bool:
        # GPT-2-style Conv1D layers store weights transposed; peft needs to know.
        return any(type(m).__name__ == "Conv1D" for m in self.inner.modules())

    def save(self, folder: str | Path) -> None:
        """``save_pretrained`` (safetensors) plus the preprocessing: ``from_pretrained(folder)`` loads it."""
        folder = Path(folder)
        self.inner.save_pretrained(str(folder), safe_serialization=True)
        self.save_preprocessing(folder)

    def save_preprocessing(self, folder: str | Path) -> None:
        """The tokenizer or feature extractor, next to the weights or the adapter."""
        raise NotImplementedError

    def weights_digest(self) -> hashlib._Hash:
        """A running hash of the architecture and the backbone's weights (head excluded), for fingerprints."""
        h = hashlib.sha256()
        inner = self.inner
        h.update(f"{type(inner).__name__}|{getattr(inner.config, 'model_type', '')}".encode())
        head = set(self.head_parameter_names())
        for name, tensor in inner.state_dict().items():
            if name in head:
                continue
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h
