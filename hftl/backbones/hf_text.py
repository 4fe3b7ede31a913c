"""transformers text models (BERT, RoBERTa, DeBERTa, MiniLM, GPT-2, ...) behind hftl's interface.

(Over 500 lines: one family of adapters on one base class, ``HFTextModel``; the notes below on what
``forward_features`` returns per architecture cover all of them.)

Two adapters share the tokenizer, the layer grouping and the saving:

- :class:`TextClassifier` wraps ``AutoModelForSequenceClassification`` (regression: one output).
  ``save`` is ``save_pretrained`` + the tokenizer, so an output loads with
  ``AutoModelForSequenceClassification.from_pretrained(out)``.
- :class:`LanguageModel` wraps ``AutoModelForCausalLM`` (GPT-style decoders) or
  ``AutoModelForMaskedLM`` (encoders, for domain-adaptive masked-LM pretraining).

**What ``forward_features`` returns.** The input of the model's *final projection*: the last
``nn.Linear`` outside the pretrained backbone (``classifier``, ``classifier.out_proj``, ``score``).
So the linear-probe head is exactly that projection, and ``forward_head(forward_features(x))``
equals ``forward(x)`` (in eval mode). Per architecture this is:

- BERT / MiniLM: the pooler output, ``tanh(dense([CLS]))`` (``bert.pooler``: pretrained when the
  checkpoint has one, as MiniLM's does; new when it has none, e.g. a masked-LM output);
- RoBERTa / XLM-R (and ELECTRA, with GELU): the classification head's ``tanh(dense(<s>))``
  (``classifier.dense``), new when starting from a base checkpoint;
- DeBERTa-v2/v3: the ``ContextPooler`` output; DistilBERT: ``relu(pre_classifier([CLS]))``;
- decoders used as classifiers (GPT-2): the last real (non-padding) token's hidden state.

A new (randomly initialised) dense layer trains with ``finetune``, is trained and saved in full by
``lora``, and stays frozen, as initialised, in a ``linear_probe``.

Layer groups, from the input up: the embeddings, each transformer layer, then what sits above the
layers (the pooler / the classification head's dense layer / the final norm); the head excluded.

Example:
    >>> model = TextClassifier.create(resolve_model("prajjwal1/bert-tiny"), ["neg", "pos"])  # doctest: +SKIP
    >>> model(model.encode_texts(["a fine film"])).shape  # doctest: +SKIP
    torch.Size([1, 2])
"""

from __future__ import annotations

import json
import logging
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

logger = logging.getLogger(__name__)

# A vocabulary lives in one of these; a folder with none of them has no tokenizer (transformers would
# silently build an empty one from tokenizer_config.json alone).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model", "spm.model", "sentencepiece.model", "source.spm", "vocab.model")
# Models whose position ids start after the padding index, so two positions are never used.
POSITION_OFFSET_TYPES = {"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xmod",
                         "roberta-prelayernorm", "ibert", "mpnet", "luke"}


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES) or any(folder.glob("*.tiktoken"))


def load_tokenizer(folder: str | Path, trust_remote_code: bool = False, name: str | None = None):
    """The tokenizer saved in a model folder; a clear error when the folder has none.

    Example:
        >>> tok = load_tokenizer("outputs/minilm_finetune")  # doctest: +SKIP
    """
    from transformers import AutoTokenizer

    return load_preprocessing(AutoTokenizer, folder, has_tokenizer(Path(folder)), "tokenizer",
                              f"none of {', '.join(TOKENIZER_FILES[:4])}, ...", trust_remote_code, name)


class HFTextModel(TransformersModel):
    """What every transformers text adapter shares: the tokenizer, input lengths, saving it, fingerprints."""

    modality = "text"

    def __init__(self, net: nn.Module, label_names: list[str] | None = None, tokenizer=None):
        super().__init__(net, label_names)
        self.tokenizer = tokenizer
        self.max_length: int | None = None
        self.preprocess_key = ""  # which columns are tokenized how (set by hftl.tasks; part of the fingerprint)

    def input_keys(self) -> tuple[str, ...]:
        return ("input_ids", "attention_mask", "token_type_ids")

    # -- text in -----------------------------------------------------------------------------------
    def model_max_length(self) -> int:
        """The most tokens one input may have: the tokenizer's and the position table's limits."""
        limits = []
        tokenizer_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_max, int) and 0 < tokenizer_max < 1_000_000:
            limits.append(tokenizer_max)
        config = self.inner.config
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                if getattr(config, "model_type", "") in POSITION_OFFSET_TYPES:
                    value -= (config.pad_token_id if config.pad_token_id is not None else 1) + 1
                limits.append(value)
                break
        return min(limits) if limits else 512

    def set_max_length(self, max_length: int | None) -> int:
        """Truncate inputs to ``max_length`` tokens, capped at what the model can take; returns the length."""
        limit = self.model_max_length()
        if max_length and max_length > limit:
            logger.info("data.max_length=%d exceeds the model's %d positions; texts are truncated to %d tokens",
                        max_length, limit, limit)
        self.max_length = min(max_length or limit, limit)
        return self.max_length

    def _start_token(self) -> int:
        tok = self.tokenizer
        for token_id in (tok.bos_token_id, tok.eos_token_id, tok.cls_token_id, tok.unk_token_id, tok.pad_token_id):
            if token_id is not None:
                return token_id
        return 0

    def tokenize(self, texts: list, pairs: list | None = None) -> list[dict]:
        """Token ids per text (or pair), truncated to ``max_length``; never empty, never too long.

        Missing texts (None) count as empty; an empty text still yields one token (the tokenizer's
        BOS/EOS/CLS), so a batch of empty texts runs instead of reaching the model with zero length.

        Example:
            >>> model.tokenize(["a good film", ""])[1]["input_ids"]  # doctest: +SKIP
            [101, 102]
        """
        if not len(texts):  # an empty split (a study's pool has no validation split): fast tokenizers fail on []
            return []
        max_length = self.max_length or self.set_max_length(None)
        texts = ["" if t is None else str(t) for t in texts]
        kwargs = dict(truncation=True, max_length=max_length)
        if pairs is not None:
            pairs = ["" if t is None else str(t) for t in pairs]
            encoded = self.tokenizer(texts, pairs, **kwargs)
        else:
            encoded = self.tokenizer(texts, **kwargs)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        rows = []
        for i in range(len(texts)):
            row = {k: list(encoded[k][i]) for k in keys}
            if not row["input_ids"]:
                row = {"input_ids": [self._start_token()], "attention_mask": [1],
                       **({"token_type_ids": [0]} if "token_type_ids" in keys else {})}
            rows.append(row)
        return rows

    def pad(self, rows: list[dict]) -> dict:
        """Pad token rows to the longest in the batch (dynamic padding); returns tensors."""
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in rows[0]]
        length = max(len(r["input_ids"]) for r in rows)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        fill = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0}
        # Right padding: what the classifiers (and GPT-2's last-real-token pooling) expect.
        return {k: torch.tensor([r[k] + [fill[k]] * (length - len(r[k])) for r in rows], dtype=torch.long)
                for k in keys}

    def encode_texts(self, texts: list[str], pairs: list[str] | None = None) -> dict:
        """A model-ready batch (padded tensors) for raw texts: what ``hftl.api.predict`` feeds the model.

        Example:
            >>> batch = model.encode_texts(["a fine film", "dull"])  # doctest: +SKIP
            >>> model(batch).softmax(-1)  # doctest: +SKIP
        """
        return self.pad(self.tokenize(list(texts), None if pairs is None else list(pairs)))

    # -- saving --------------------------------------------------------------------------------
    def save_preprocessing(self, folder: str | Path) -> None:
        """The tokenizer, next to the weights or the adapter (so a LoRA output is complete too)."""
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(folder))

    length_key = "max_length"  # the data.* key that bounded input length in training

    def restore_settings(self, folder: str | Path) -> None:
        """Take the run's input length (``data.max_length``, LMs: ``data.block_size``) from its ``hftl_config.yaml``."""
        import yaml

        path = Path(folder) / "hftl_config.yaml"
        if path.is_file():
            data = (yaml.safe_load(path.read_text()) or {}).get("data", {})
            self.set_max_length(data.get(self.length_key))

    def fingerprint(self) -> str:
        """Backbone weights (head excluded), the tokenizer, and how texts are cut and paired."""
        h = self.weights_digest()
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        vocab = backend.to_str() if backend is not None else json.dumps(sorted(self.tokenizer.get_vocab().items()))
        h.update(vocab.encode())
        h.update(f"{self.max_length}|{self.preprocess_key}".encode())
        return h.hexdigest()[:24]


def sentence_pooling(folder: str | Path) -> str | None:
    """The pooling a sentence-transformers folder declares ("mean", "cls", "max", ...), or None for other folders.

    Read from ``modules.json`` and its Pooling module's ``config.json``, the files sentence-transformers writes.

    Example:
        >>> sentence_pooling(text_model_dir())  # all-MiniLM-L6-v2  # doctest: +SKIP
        'mean'
    """
    folder = Path(folder)
    try:
        modules = json.loads((folder / "modules.json").read_text())
        entry = next(m for m in modules if str(m.get("type", "")).endswith("Pooling"))
        config = json.loads((folder / entry["path"] / "config.json").read_text())
    except (OSError, ValueError, StopIteration, TypeError, KeyError, AttributeError):
        return None
    modes = [k[len("pooling_mode_"):].removesuffix("_tokens").removesuffix("_token")
             for k, v in config.items() if k.startswith("pooling_mode_") and v is True]
    return modes[0] if len(modes) == 1 else None


class MeanPooledClassifier(nn.Module):
    """A transformers encoder, the mean of its token states over the real tokens, then one ``nn.Linear``.

    What a sentence-transformers model is trained to give (all-MiniLM-L6-v2, mpnet, e5 ...): its [CLS]
    pooler was never trained for sentences, and a probe on it trails one on the mean (measured on two
    text sets: benchmarks/quality.py). Saved in sentence-transformers' own layout (the encoder at the
    folder's root, ``1_Pooling``, and the head as a ``2_Dense`` layer with no activation), so
    ``SentenceTransformer(out).encode(texts)`` gives the logits and ``AutoModel.from_pretrained(out)``
    the encoder. The call signature and ``.logits`` output are those of a transformers classifier.
    """

    base_model_prefix = "encoder"
    head_folder = "2_Dense"

    def __init__(self, encoder: nn.Module, config):
        super().__init__()
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # unused: a parameter without gradients would stall DDP
        self.encoder, self.config = encoder, config
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        nn.init.normal_(self.classifier.weight, std=getattr(config, "initializer_range", 0.02))
        nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **_):
        from transformers.modeling_outputs import SequenceClassifierOutput

        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return SequenceClassifierOutput(logits=self.classifier(pooled))

    def get_output_embeddings(self):
        return None

    def save_pretrained(self, folder: str | Path, safe_serialization: bool = True, **kwargs) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        self.encoder.config.update({k: getattr(self.config, k) for k in ("num_labels", "id2label", "label2id",
                                                                         "problem_type")})
        self.encoder.save_pretrained(str(folder), safe_serialization=True, **kwargs)
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": self.head_folder, "type": "sentence_transformers.models.Dense"}], indent=2))
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": self.config.hidden_size, "pooling_mode_mean_tokens": True}, indent=2))
        head = folder / self.head_folder
        head.mkdir(exist_ok=True)
        (head / "config.json").write_text(json.dumps({
            "in_features": self.classifier.in_features, "out_features": self.classifier.out_features, "bias": True,
            "activation_function": "torch.nn.modules.linear.Identity"}, indent=2))
        save_file({"linear.weight": self.classifier.weight.detach().contiguous(),
                   "linear.bias": self.classifier.bias.detach().contiguous()}, str(head / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, folder: str | Path, trust_remote_code: bool = False) -> MeanPooledClassifier:
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel

        folder = Path(folder)
        config = AutoConfig.from_pretrained(str(folder), **remote_kwargs(trust_remote_code))
        kwargs = {"config": config, "dtype": torch.float32, **remote_kwargs(trust_remote_code)}
        try:  # hftl saved no pooler (it is unused): do not build one only to report it missing
            encoder = AutoModel.from_pretrained(str(folder), add_pooling_layer=False, **kwargs)
        except TypeError:  # an architecture without that switch
            encoder = AutoModel.from_pretrained(str(folder), **kwargs)
        net = cls(encoder, config)
        weights = load_file(str(folder / cls.head_folder / "model.safetensors"))
        net.classifier.load_state_dict({"weight": weights["linear.weight"], "bias": weights["linear.bias"]})
        return net


class TextClassifier(HFTextModel):
    """A transformers encoder (or decoder) with a sequence-classification head sized to the labels.

    Example:
        >>> model = TextClassifier.create(resolve_model("some/bert"), ["neg", "pos"])  # doctest: +SKIP
        >>> model(model.encode_texts(["great"])).argmax(-1)  # doctest: +SKIP
    """

    # A pretrained encoder under its new head trains at 0.05 x the head's rate: 5e-5 under the default 1e-3, the
    # rate transformers' Trainer and BERT's recipes fine-tune at. Against one rate of 1e-3 for everything
    # (benchmarks/quality.py, MiniLM, one run each): docstrings 0.707 vs 0.680, tickets 1.000 vs 0.997,
    # weather R^2 0.971 vs 0.959, review scores 0.887 vs 0.894.
    pretrained_backbone_lr_scale = 0.05

    @classmethod
    def create(cls, ref: ModelRef, label_names: list[str], pretrained: bool = True, **kwargs) -> TextClassifier:
        """Build from a resolved reference; ``problem_type="regression"`` gives one output, named ``label_names[0]``."""
        from transformers import AutoConfig, AutoModelForSequenceClassification

        trust, kwargs = config_kwargs(kwargs)
        problem_type = kwargs.pop("problem_type", None)  # regression, multi_label_classification, or single-label
        regression = problem_type == "regression"
        tokenizer = load_tokenizer(ref.path, trust, ref.describe())
        names = [str(label_names[0]) if label_names else "score"] if regression else [str(n) for n in label_names]
        if not names:
            raise ConfigError("text_classification needs at least one label; the data has none.")
        config = AutoConfig.from_pretrained(
            str(ref.path), num_labels=len(names), id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)}, **remote_kwargs(trust), **kwargs)
        config.problem_type = problem_type or "single_label_classification"  # what pipelines read (sigmoid or softmax)
        if tokenizer.pad_token is None:  # GPT-style tokenizers: pad with EOS (the classifier skips padding)
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tokenizer.pad_token_id
        pooling = kwargs.pop("pooling", "auto")
        if pooling == "auto" and sentence_pooling(ref.path) == "mean":
            from transformers import AutoModel

            encoder, missing = from_pretrained_or_config(AutoModel, ref, config, pretrained, trust)
            net = MeanPooledClassifier(encoder, config)
            logger.info("'%s' is a sentence-transformers model with mean pooling: its head reads the mean of the "
                        "token states, as the model was trained (model.pooling=head: the [CLS] pooler)", ref.describe())
        else:
            net, missing = from_pretrained_or_config(AutoModelForSequenceClassification, ref, config, pretrained, trust)
        model = cls(net, names, tokenizer)
        model.new_modules = new_modules(net, missing)
        return model

    @classmethod
    def from_output(cls, folder: Path, trust_remote_code: bool = False) -> TextClassifier:
        """Load a folder hftl (or ``save_pretrained``) wrote for sequence classification."""
        from transformers import AutoModelForSequenceClassification

        if (folder / MeanPooledClassifier.head_folder).is_dir():
            net = MeanPooledClassifier.from_pretrained(folder, trust_remote_code)
        else:
            net = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.float32,
                                                                     **remote_kwargs(trust_remote_code))
        names = [str(net.config.id2label[i]) for i in range(net.config.num_labels)]
        model = cls(net, names, load_tokenizer(folder, trust_remote_code))
        model.restore_settings(folder)
        return model

    @property
    def library(self) -> str:
        """What loads the saved folder: transformers, or sentence-transformers for a mean-pooled classifier."""
        return "sentence-transformers" if isinstance(self.inner, MeanPooledClassifier) else "transformers"

    @property
    def is_regression(self) -> bool:
        return self.inner.config.num_labels == 1

    def forward(self, batch: dict) -> torch.Tensor:
        return self.net(**self._inputs(batch)).logits

    def forward_features(self, batch: dict) -> torch.Tensor:
        """The final projection's input (see the module docs), captured with a forward pre-hook."""
        features = head_input(self, batch)
        if features.dim() == 3:  # decoder classifiers project every token, then keep the last real one
            pad = self.inner.config.pad_token_id
            ids = batch["input_ids"]
            if pad is None:
                last = torch.full((ids.shape[0],), ids.shape[1] - 1, device=ids.device)
            else:
                positions = torch.arange(ids.shape[1], device=ids.device)
                last = (positions * (ids != pad).int()).argmax(-1)
            features = features[torch.arange(ids.shape[0], device=ids.device), last]
        return features

    def lora_options(self) -> dict:
        """peft settings: SEQ_CLS, and every module outside the backbone trained and saved in full.

        That is the head and, where the architecture has one outside the backbone, its new dense
        layer (RoBERTa's classifier.dense, DistilBERT's pre_classifier, DeBERTa's pooler).
        """
        inner = self.inner
        prefix = getattr(inner, "base_model_prefix", "")
        extra = [n for n, m in inner.named_children() if n != prefix and any(True for _ in m.parameters())]
        extra = extra or [self.head_name.split(".")[0]]
        # Plus new layers inside the backbone, e.g. BERT's pooler when starting from a masked-LM checkpoint.
        inside = [n for n in self.new_modules if not any(n == e or n.startswith(e + ".") for e in extra)]
        return {"task_type": "SEQ_CLS", "modules_to_save": extra + inside, "fan_in_fan_out": self._fan_in_fan_out()}


class LanguageModel(HFTextModel):
    """A causal (GPT-style) or masked (BERT-style) language model: logits over the vocabulary per token.

    Example:
        >>> lm = LanguageModel.create(resolve_model("gpt2"), task="causal_lm")  # doctest: +SKIP
        >>> lm.generate_text("Once upon a time", max_new_tokens=10)  # doctest: +SKIP
    """

    length_key = "block_size"

    def __init__(self, net: nn.Module, label_names: list[str] | None = None, tokenizer=None,
                 kind: str = "causal"):
        super().__init__(net, label_names, tokenizer)
        self.kind = kind

    @classmethod
    def create(cls, ref: ModelRef, task: str = "causal_lm", pretrained: bool = True, **kwargs) -> LanguageModel:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

        trust, kwargs = config_kwargs(kwargs)
        kind = "causal" if task == "causal_lm" else "masked"
        tokenizer = load_tokenizer(ref.path, trust, ref.describe())
        if kind == "masked" and tokenizer.mask_token is None:
            raise ConfigError(
                f"'{ref.describe()}' has a tokenizer without a mask token, so it cannot be trained as a masked LM. "
                "Use an encoder (BERT, RoBERTa, MiniLM ...) for task masked_lm, or task causal_lm for decoders."
            )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        config = AutoConfig.from_pretrained(str(ref.path), **remote_kwargs(trust), **kwargs)
        auto = AutoModelForCausalLM if kind == "causal" else AutoModelForMaskedLM
        net, missing = from_pretrained_or_config(auto, ref, config, pretrained, trust)
        model = cls(net, [], tokenizer, kind=kind)
        model.new_modules = new_modules(net, missing)
        return model

    @classmethod
    def from_output(cls, folder: Path, task: str = "causal_lm", trust_remote_code: bool = False) -> LanguageModel:
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

        auto = AutoModelForCausalLM if task == "causal_lm" else AutoModelForMaskedLM
        net = auto.from_pretrained(str(folder), dtype=torch.float32, **remote_kwargs(trust_remote_code))
        model = cls(net, [], load_tokenizer(folder, trust_remote_code),
                    kind="causal" if task == "causal_lm" else "masked")
        model.restore_settings(folder)
        return model

    def _find_head(self) -> str:
        inner = self.inner
        out = inner.get_output_embeddings()
        for name, module in inner.named_modules():
            if module is out:
                return name
        raise ConfigError(f"Cannot find the output layer of {type(inner).__name__}.")

    def forward(self, batch: dict) -> torch.Tensor:
        return self.net(**self._inputs(batch)).logits

    def forward_features(self, batch: dict) -> torch.Tensor:
        """Per-token hidden states that the output projection sees: (batch, tokens, features)."""
        return head_input(self, batch)

    def lora_options(self) -> dict:
        """peft settings: CAUSAL_LM for decoders; the output layer (tied to the embeddings) is never copied.

        Layers the checkpoint lacked are trained and saved in full, so a reloaded adapter predicts
        as the trained model did: e.g. a masked-LM head's own layers (BERT's
        ``cls.predictions.transform``) when the checkpoint is a bare encoder, as MiniLM's is.
        """
        return {"task_type": "CAUSAL_LM" if self.kind == "causal" else None,
                "modules_to_save": list(self.new_modules) or None, "fan_in_fan_out": self._fan_in_fan_out()}

    @torch.inference_mode()
    def generate_text(self, prompt: str, max_new_tokens: int = 40, temperature: float = 0.0) -> str:
        """The prompt and its continuation; greedy at temperature 0, sampled above it.

        Example:
            >>> lm.generate_text("The cat", max_new_tokens=5)  # doctest: +SKIP
            'The cat sat on the mat'
        """
        from transformers import GenerationConfig

        if self.kind != "causal":
            raise ConfigError("Text generation needs a causal LM (task causal_lm); this is a masked LM.")
        if max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be at least 1.")
        self.eval()
        tok = self.tokenizer
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        if ids.shape[1] == 0:  # an empty prompt starts from the start-of-text token
            ids = torch.tensor([[self._start_token()]])
        limit = self.model_max_length()
        ids = ids[:, -max(1, limit - max_new_tokens):]  # keep the end of an over-long prompt
        device = next(self.net.parameters()).device
        ids = ids.to(device)
        sample = temperature > 0
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sample,
                                  temperature=temperature if sample else None, top_k=50 if sample else None,
                                  top_p=None, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        out = self.net.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        return tok.decode(out[0], skip_special_tokens=True)


TASK_BY_ARCHITECTURE = (("ForSequenceClassification", "text_classification"), ("ForCausalLM", "causal_lm"),
                        ("LMHeadModel", "causal_lm"), ("ForMaskedLM", "masked_lm"))


def load_transformers_output(folder: str | Path, trust_remote_code: bool = False) -> HFTextModel:
    """Load a transformers output folder as the adapter its task needs (from hftl.json or config.json).

    Example:
        >>> model = load_transformers_output("outputs/gpt2_finetune")  # doctest: +SKIP
    """
    folder = Path(folder)
    task = None
    meta = folder / "hftl.json"
    if meta.is_file():
        task = json.loads(meta.read_text()).get("task")
    if task not in ("text_classification", "text_regression", "causal_lm", "masked_lm"):
        # No hftl.json, or a task registered outside hftl on a text adapter: the architecture tells which one.
        architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
        task = next((t for a in architectures for suffix, t in TASK_BY_ARCHITECTURE if a.endswith(suffix)), None)
    if task in ("text_classification", "text_regression"):
        return TextClassifier.from_output(folder, trust_remote_code)
    if task in ("causal_lm", "masked_lm"):
        return LanguageModel.from_output(folder, task, trust_remote_code)
    raise ConfigError(
        f"'{folder}' holds a transformers model that is not a sequence classifier or language model "
        "(see architectures in its config.json), so hftl cannot load it for a task."
    )


