"""transformers audio models (wav2vec2, HuBERT, WavLM, AST, Whisper's encoder, ...) behind hftl's interface.

:class:`AudioClassifier` wraps ``AutoModelForAudioClassification`` and the model's feature
extractor (``preprocessor_config.json``); ``save`` writes both, so an output loads with
``AutoModelForAudioClassification.from_pretrained(out)`` and ``AutoFeatureExtractor``, or with
``pipeline("audio-classification", model=out)``.

**What ``forward_features`` returns.** What the head sees. wav2vec2/HuBERT/WavLM/Whisper project
each frame, average the frames over time and classify; both maps are linear, so the head is
``projector`` + ``classifier`` and the features are the encoder's time-averaged frames (padding
left out as the model leaves it out). AST's head is ``classifier.dense`` on its normalised pooled
tokens. Either way ``forward_head(forward_features(x))`` equals ``forward(x)``, and a linear probe
trains every new layer on cached features.

Layer groups, from the input up: the convolutional feature encoder (wav2vec2, HuBERT) or the
patch/conv embeddings (AST, Whisper), each transformer layer, then what sits above the layers;
the head excluded. Starting from a pretrained checkpoint, the convolutional feature encoder stays
frozen by default (``strategy.freeze_feature_encoder``), as in transformers' audio-classification
example: it is already good at its job and costly to train.

Any checkpoint with an encoder loads: a speech-recognition (CTC) or pretraining checkpoint such
as ``facebook/wav2vec2-base`` gets a new head; ``openai/whisper-tiny`` gives its encoder.

**Whisper's window.** Whisper pads every clip to 30 s, and its classifier averages all 1500 encoder
frames, so a 1-s clip is 97% padding in what the head sees. :meth:`AudioClassifier.fit_window`
shortens the window to the data's longest clip (whole seconds; hftl's audio task does it when it
creates the model): the first rows of the sinusoidal position table are kept and the feature
extractor pads to the same length (``max_source_positions``, ``chunk_length``), so the output is still
a plain ``WhisperForAudioClassification``. Measured on Whisper tiny.en's probe
(``benchmarks/quality.py``, clips of 0.4-1.1 s): 0.65 -> 0.73 on five vowels and 0.91 -> 0.95 on six
timbres, and the encoder does 1/15 of the work.

Example:
    >>> model = AudioClassifier.create(resolve_model("facebook/wav2vec2-base"), ["yes", "no"])  # doctest: +SKIP
    >>> model(model.encode_audio([wave])).shape  # doctest: +SKIP
    torch.Size([1, 2])
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
from torch import nn

from hftl.backbones.hf_common import (
    TransformersModel,
    config_kwargs,
    from_pretrained_or_config,
    head_input,
    load_preprocessing,
    new_modules,
    remote_kwargs,
)
from hftl.errors import ConfigError
from hftl.refs import ModelRef

FEATURE_EXTRACTOR_FILE = "preprocessor_config.json"


def load_feature_extractor(folder: str | Path, trust_remote_code: bool = False, name: str | None = None):
    """The feature extractor saved in a model folder; a clear error when the folder has none.

    Example:
        >>> fe = load_feature_extractor("outputs/wav2vec2_finetune")  # doctest: +SKIP
        >>> fe.sampling_rate  # doctest: +SKIP
        16000
    """
    from transformers import AutoFeatureExtractor

    present = (Path(folder) / FEATURE_EXTRACTOR_FILE).is_file()
    return load_preprocessing(AutoFeatureExtractor, folder, present, "feature extractor",
                              f"{FEATURE_EXTRACTOR_FILE} is missing", trust_remote_code, name)


class AudioClassifier(TransformersModel):
    """An audio encoder with a classification head sized to the labels, and its feature extractor."""

    modality = "audio"
    # Transformer layers only: the convolutional feature encoder's numbered conv_layers are not layers.
    layer_pattern = r"\.(?:layers?|h|blocks?)\.(\d+)\."
    # A pretrained encoder under its new head trains at 0.2 x the head's rate (2e-4 under the default 1e-3).
    # Whisper tiny.en fine-tuned by benchmarks/quality.py (one run each, test accuracy at 1 / 0.2 / 0.05):
    # vowels 0.850 / 0.835 / 0.805, timbres 0.933 / 0.992 / 1.000; the validation splits ranked 0.2 and 0.05
    # at or above 1 on both (README, "Learning rate").
    pretrained_backbone_lr_scale = 0.2

    def __init__(self, net: nn.Module, label_names: list[str] | None = None, feature_extractor=None):
        super().__init__(net, label_names)
        self.feature_extractor = feature_extractor
        self.max_duration: float | None = None  # seconds; set from data.max_duration (part of the fingerprint)

    @classmethod
    def create(cls, ref: ModelRef, label_names: list[str], pretrained: bool = True, **kwargs) -> AudioClassifier:
        """Build from a resolved reference with a new head for ``label_names``."""
        from transformers import AutoConfig, AutoModelForAudioClassification

        trust, kwargs = config_kwargs(kwargs)
        names = [str(n) for n in label_names]
        if not names:
            raise ConfigError("audio_classification needs at least one label; the data has none.")
        extractor = load_feature_extractor(ref.path, trust, ref.describe())
        config = AutoConfig.from_pretrained(
            str(ref.path), num_labels=len(names), id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)}, **remote_kwargs(trust), **kwargs)
        net, missing = from_pretrained_or_config(AutoModelForAudioClassification, ref, config, pretrained, trust)
        model = cls(net, names, extractor)
        model.new_modules = new_modules(net, missing)
        model.pretrained = pretrained
        return model

    @classmethod
    def from_output(cls, folder: Path, trust_remote_code: bool = False) -> AudioClassifier:
        """Load a folder hftl (or ``save_pretrained``) wrote for audio classification."""
        from transformers import AutoModelForAudioClassification

        net = AutoModelForAudioClassification.from_pretrained(str(folder), dtype=torch.float32,
                                                              **remote_kwargs(trust_remote_code))
        names = [str(net.config.id2label[i]) for i in range(net.config.num_labels)]
        model = cls(net, names, load_feature_extractor(folder, trust_remote_code))
        model.restore_settings(folder)
        return model

    # -- structure -------------------------------------------------------------------------------
    def input_keys(self) -> tuple[str, ...]:
        return ("input_values", "input_features", "attention_mask")

    @property
    def ddp_find_unused_parameters(self) -> bool:
        """LayerDrop and SpecAugment leave parameters unused at random in training steps (see hftl.trainer)."""
        config = self.inner.config
        return bool(getattr(config, "layerdrop", 0) or getattr(config, "encoder_layerdrop", 0)
                    or getattr(config, "apply_spec_augment", False))

    @property
    def backbone_name(self) -> str:
        """The child of ``net`` that holds the pretrained encoder (``wav2vec2``, ``encoder``, ...)."""
        inner = self.inner
        prefix = getattr(inner, "base_model_prefix", "")
        return prefix if hasattr(inner, prefix) else "encoder"

    def feature_encoder_parameter_names(self) -> set[str]:
        """The convolutional feature encoder (wav2vec2, HuBERT, WavLM): frozen unless the strategy says not.

        Only a pretrained one: random convolutions (model.pretrained=false) must train.
        """
        if not getattr(self, "pretrained", True):
            return set()
        return {n for n, _ in self.net.named_parameters() if ".feature_extractor." in f".{n}"}

    def forward(self, batch: dict) -> torch.Tensor:
        return self.net(**self._inputs(batch)).logits

    # -- the head: wav2vec2/HuBERT/WavLM/Whisper project each frame, average over time, then classify.
    # Both maps are linear, so averaging the encoder's frames first and then applying projector and
    # classifier gives the same logits: the head is projector + classifier, both new, and a linear
    # probe trains the two of them on cached time-averaged features.
    @property
    def projector(self) -> nn.Module | None:
        return getattr(self.inner, "projector", None)

    @property
    def head(self) -> nn.Module:
        classifier = super().head
        return nn.Sequential(self.projector, classifier) if self.projector is not None else classifier

    @property
    def num_features(self) -> int:
        return self.projector.in_features if self.projector is not None else super().num_features

    def head_parameter_names(self) -> list[str]:
        named = {n for n, _ in self.net.named_parameters()}
        modules = (["projector"] if self.projector is not None else []) + [self.head_name]
        owned = [f"{m}.{p}" for m in modules for p, _ in self.inner.get_submodule(m).named_parameters()]
        return [n for n in owned if n in named]

    def forward_features(self, batch: dict) -> torch.Tensor:
        """What the head sees (see above): the time-averaged encoder frames, or AST's pooled tokens."""
        if self.projector is None:
            return head_input(self, batch)
        captured = {}
        handle = self.projector.register_forward_pre_hook(lambda module, args: captured.update(x=args[0]))
        try:
            self.net(**self._inputs(batch))
        finally:
            handle.remove()
        frames, mask = captured["x"], batch.get("attention_mask")
        if mask is None or not hasattr(self.inner, "_get_feature_vector_attention_mask"):
            return frames.mean(dim=1)  # Whisper (fixed window) or no padding: a plain mean, as the model does
        keep = self.inner._get_feature_vector_attention_mask(frames.shape[1], mask).unsqueeze(-1).to(frames.dtype)
        return (frames * keep).sum(dim=1) / keep.sum(dim=1)

    def lora_options(self) -> dict:
        """peft settings: every module outside the encoder (projector, head) trained and saved in full."""
        backbone = self.backbone_name
        extra = [n for n, m in self.inner.named_children() if n != backbone and any(True for _ in m.parameters())]
        inside = [n for n in self.new_modules if not any(n == e or n.startswith(e + ".") for e in extra)]
        # peft has no audio-classification task type; the plain PeftModel saves and reloads the same way.
        return {"modules_to_save": (extra or [self.head_name.split(".")[0]]) + inside}

    # -- audio in ----------------------------------------------------------------------------------
    @property
    def sampling_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    def encode_audio(self, waves: list) -> dict:
        """A model-ready batch for mono float waveforms at ``sampling_rate``: the feature extractor's tensors.

        Example:
            >>> batch = model.encode_audio([read_audio("clip.wav", model.sampling_rate)])  # doctest: +SKIP
        """
        fe = self.feature_extractor
        kwargs = {"sampling_rate": self.sampling_rate, "return_tensors": "pt"}
        if "attention_mask" in getattr(fe, "model_input_names", ()):
            kwargs["return_attention_mask"] = True
        if type(fe).__name__ != "WhisperFeatureExtractor":  # Whisper pads to its fixed window itself
            kwargs["padding"] = True
        out = fe([w for w in waves], **kwargs)
        return {k: v for k, v in out.items() if k in self.input_keys()}

    # -- saving --------------------------------------------------------------------------------
    def save_preprocessing(self, folder: str | Path) -> None:
        if self.feature_extractor is not None:
            self.feature_extractor.save_pretrained(str(folder))

    def restore_settings(self, folder: str | Path) -> None:
        """Take the run's clip length (``data.max_duration``) from its ``hftl_config.yaml``, and Whisper's window
        from its saved feature extractor (a LoRA adapter's base is rebuilt with the full 30 s)."""
        import yaml

        path = Path(folder) / "hftl_config.yaml"
        if path.is_file():
            self.max_duration = ((yaml.safe_load(path.read_text()) or {}).get("data") or {}).get("max_duration")
        saved = Path(folder) / FEATURE_EXTRACTOR_FILE
        if saved.is_file() and isinstance(chunk := json.loads(saved.read_text()).get("chunk_length"), (int, float)):
            self.fit_window(chunk)

    def fit_window(self, seconds: float) -> None:
        """Whisper only: shorten the encoder's fixed window (30 s) to ``seconds``, rounded up to whole seconds.

        Never lengthens it (the position table has no rows past its end); other models are left as they are.

        Example:
            >>> model.fit_window(1.2)  # doctest: +SKIP
            >>> model.feature_extractor.chunk_length, model.inner.config.max_source_positions  # doctest: +SKIP
            (2, 100)
        """
        fe = self.feature_extractor
        if type(fe).__name__ != "WhisperFeatureExtractor" or not hasattr(self.inner, "encoder"):
            return
        chunk = max(1, math.ceil(seconds))
        encoder = self.inner.encoder
        strides = encoder.conv1.stride[0] * encoder.conv2.stride[0]
        positions = chunk * fe.sampling_rate // fe.hop_length // strides
        if chunk >= fe.chunk_length or positions >= encoder.embed_positions.num_embeddings:
            return
        table = encoder.embed_positions
        table.weight = nn.Parameter(table.weight.detach()[:positions].clone(), requires_grad=table.weight.requires_grad)
        table.num_embeddings = positions
        self.inner.config.max_source_positions = encoder.config.max_source_positions = positions
        encoder.max_source_positions = positions
        fitted = copy.deepcopy(fe)  # the attributes WhisperFeatureExtractor derives from chunk_length
        fitted.chunk_length, fitted.n_samples = chunk, chunk * fe.sampling_rate
        fitted.nb_max_frames = fitted.n_samples // fe.hop_length
        self.feature_extractor = fitted

    def fingerprint(self) -> str:
        """Backbone weights (head excluded), the feature extractor's settings and the clip length."""
        h = self.weights_digest()
        h.update(self.feature_extractor.to_json_string().encode())
        h.update(f"{self.max_duration}".encode())
        return h.hexdigest()[:24]
