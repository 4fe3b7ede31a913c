"""Language models: fine-tune a GPT-style decoder (``causal_lm``) or continue an encoder's masked-LM pretraining (``masked_lm``).

Documents come from a ``.txt`` file, a folder of ``.txt`` files or a dataset column; they are
packed into blocks of ``data.block_size`` tokens, with perplexity on a held-out split.
``causal_lm`` outputs load with ``AutoModelForCausalLM`` (LoRA: ``PeftModel``) and generate text
(:func:`generate`); a ``masked_lm`` output is a starting point for a ``text_classification`` run
(domain-adaptive pretraining), whose card then records the chain (hftl.chain);
:func:`hftl.api.adapt_then_finetune` runs both in one call.

Example:
    >>> result = hftl.train("recipes/configs/causal_lm/gpt2_finetune.yaml")  # doctest: +SKIP
    >>> generate(result.output_dir, "Once upon a time", max_new_tokens=20)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from hftl.config import Config, DataConfig
from hftl.data import LabelledData
from hftl.errors import ConfigError, DataError
from hftl.tasks.base import Task, library_error

logger = logging.getLogger(__name__)

LM_TASKS = ("causal_lm", "masked_lm")


class LanguageModelTask(Task):
    """``causal_lm`` (next-token loss) and ``masked_lm`` (loss on the masked tokens); perplexity from the loss."""

    @property
    def causal(self) -> bool:
        return self.name == "causal_lm"

    def create_model(self, ref, label_names, *, pretrained=True, **kwargs):
        from hftl.backbones.hf_text import LanguageModel

        if ref.library != "transformers":
            raise library_error(self.name, ref, "transformers", "a Hub id (openai-community/gpt2), a "
                                "save_pretrained folder or python-package:<module>/<folder>")
        return LanguageModel.create(ref, self.name, pretrained=pretrained, **kwargs)

    def load_data(self, cfg: Config, whole: bool = False) -> LabelledData:
        return load_corpus(cfg.data)

    def datasets(self, cfg: Config, model, data, whole: bool = False):
        train_ds, eval_ds = lm_datasets(cfg, model, data, whole=whole)
        model.set_max_length(cfg.data.block_size)
        logger.info("%s on %s: %d train / %d held-out blocks of %d tokens", self.name, data.source, len(train_ds),
                    len(eval_ds), cfg.data.block_size)
        return train_ds, eval_ds, None

    def loss(self, cfg: Config):
        return causal_lm_loss if self.causal else masked_lm_loss

    def card_facts(self, cfg: Config, model, data, train_ds, eval_ds) -> dict:
        return {"num_train": f"{len(train_ds)} blocks of {cfg.data.block_size} tokens",
                "num_validation": f"{len(eval_ds)}", "num_labels": "no"}

    def predict(self, model, inputs: list, top_k: int = 3) -> list:
        raise ConfigError("This is a language model, not a classifier: use `hftl generate` (causal LMs), or "
                          "fine-tune it for classification first (task text_classification).")


# ------------------------------------------------------------------------------------- LM corpora

def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"'{path}' is not UTF-8 text ({e}). Convert it to UTF-8.") from e


def load_corpus(cfg: DataConfig) -> LabelledData:
    """Text from a ``.txt`` file, a folder of ``.txt`` files, a CSV/JSON-lines file or a Hub dataset column.

    Each file (or each row of a column) is one document. ``validation`` is None unless the source has
    a validation split (the run then holds out blocks of the training text).

    Example:
        >>> load_corpus(DataConfig(id="stories.txt")).train[0][:20]  # doctest: +SKIP
        'Once upon a time, th'
    """
    import datasets

    from hftl.data import _hub_dataset, split_names

    path = Path(cfg.id).expanduser()
    validation = None
    if cfg.id.startswith("builtin:"):
        raise DataError(f"'{cfg.id}' is an image set; a language model needs text: a .txt file, a folder of .txt "
                        "files, a CSV/JSON-lines file or a Hub dataset (data.id).")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"Folder '{path}' holds no .txt files. Put the corpus there as UTF-8 .txt files.")
        docs = [_read_text(p) for p in files]
    elif path.suffix.lower() == ".txt":
        if not path.is_file():
            raise DataError(f"Text file '{path}' does not exist. Check data.id.")
        docs = [_read_text(path)]
    else:
        if path.suffix.lower() in (".csv", ".json", ".jsonl"):
            if not path.is_file():
                raise DataError(f"Data file '{path}' does not exist. Check data.id.")
            kind = "csv" if path.suffix.lower() == ".csv" else "json"
            splits = {"train": datasets.load_dataset(kind, data_files=str(path), split="train")}
        else:
            splits = _hub_dataset(cfg)
        val_name = split_names(splits, cfg)
        columns = splits[cfg.train_split].column_names
        if cfg.text_column not in columns:
            raise DataError(f"Column '{cfg.text_column}' is not in '{cfg.id}'. Its columns are: {', '.join(columns)}. "
                            "Set data.text_column.")
        docs = [str(t) for t in splits[cfg.train_split][cfg.text_column] if t is not None]
        if val_name:
            validation = [str(t) for t in splits[val_name][cfg.text_column] if t is not None]
    if cfg.max_train_samples is not None:
        docs = docs[: cfg.max_train_samples]
    if not any(d.strip() for d in docs):
        raise DataError(f"The corpus '{cfg.id}' is empty: it holds no text.")
    return LabelledData(docs, validation, [], str(cfg.id), "")


def pack_blocks(tokenizer, docs: list[str], block_size: int, causal: bool) -> tuple[torch.Tensor, int]:
    """Tokenize documents, join them (EOS between documents for causal LMs) and cut blocks of ``block_size``.

    Returns (blocks of shape (n, block_size), total tokens). The tail shorter than a block is
    dropped, as transformers' run_clm does.

    Example:
        >>> blocks, tokens = pack_blocks(tokenizer, ["the cat sat", "on the mat"], 4, causal=True)  # doctest: +SKIP
        >>> blocks.shape  # doctest: +SKIP
        torch.Size([2, 4])
    """
    ids: list[int] = []
    for start in range(0, len(docs), 256):
        chunk = [d for d in docs[start:start + 256] if d.strip()]
        if not chunk:
            continue
        # Long documents exceed model_max_length here on purpose: they are cut into blocks below.
        for row in tokenizer(chunk, add_special_tokens=True, verbose=False)["input_ids"]:
            ids.extend(row)
            if causal and tokenizer.eos_token_id is not None:
                ids.append(tokenizer.eos_token_id)
    n = len(ids) // block_size
    if n == 0:
        return torch.empty(0, block_size, dtype=torch.long), len(ids)
    return torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size), len(ids)


class BlockDataset(torch.utils.data.Dataset):
    """Packed blocks for causal LMs: the model predicts each next token (the loss shifts the labels)."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict:
        block = self.blocks[index]
        return {"input_ids": block, "attention_mask": torch.ones_like(block), "labels": block.clone()}


class MaskedBlockDataset(BlockDataset):
    """Packed blocks with BERT-style masking (transformers' DataCollatorForLanguageModeling rule).

    15% of the non-special tokens are picked (at least one per block, so the loss is never empty):
    80% become the mask token, 10% a random token, 10% stay. The draw depends only on (seed, epoch,
    index), never on the global RNG, so resumed runs and worker processes see the same masks; the
    validation split (``random=False``) keeps one fixed mask per block.
    """

    def __init__(self, blocks: torch.Tensor, tokenizer, seed: int, random: bool = True,
                 probability: float = 0.15):
        from transformers import DataCollatorForLanguageModeling

        super().__init__(blocks)
        self.tokenizer = tokenizer
        self.collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability)
        self.seed, self.random, self.epoch = seed, random, 0
        self.special = torch.tensor(
            [tokenizer.get_special_tokens_mask(b.tolist(), already_has_special_tokens=True) for b in blocks],
            dtype=torch.bool).view(blocks.shape) if len(blocks) else torch.zeros(blocks.shape, dtype=torch.bool)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        epoch = self.epoch if self.random else 0
        generator = torch.Generator().manual_seed(hash((self.seed, epoch, int(index))) & 0x7FFF_FFFF)
        self.collator.generator = generator
        inputs, labels = self.collator.torch_mask_tokens(self.blocks[index].clone()[None],
                                                         self.special[index][None])
        if not (labels != -100).any():
            candidates = (~self.special[index]).nonzero().flatten()
            if len(candidates):
                pos = candidates[torch.randint(len(candidates), (1,), generator=generator)].item()
                labels[0, pos] = self.blocks[index][pos]
                inputs[0, pos] = self.tokenizer.mask_token_id
        return {"input_ids": inputs[0], "attention_mask": torch.ones_like(inputs[0]), "labels": labels[0]}


def causal_lm_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts token t+1 (labels shifted here, not in the data)."""
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


def masked_lm_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Cross-entropy on the masked positions only (labels are -100 elsewhere)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100)


def _split_blocks(blocks: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))
    n_val = min(len(blocks) - 1, max(1, round(len(blocks) * fraction)))
    return blocks[order[n_val:]], blocks[order[:n_val]]


def lm_datasets(cfg: Config, model, corpus: LabelledData, whole: bool = False):
    """(train, validation) block datasets for a language-model task, with clear errors for small corpora.

    ``whole``: a corpus to score (``hftl eval`` on other text): without a validation split, every block is scored.
    """
    dc = cfg.data
    causal = cfg.task == "causal_lm"
    limit = model.model_max_length()
    if dc.block_size < 2:
        raise ConfigError("data.block_size must be at least 2 tokens.")
    if dc.block_size > limit:
        raise ConfigError(f"data.block_size={dc.block_size} exceeds the model's maximum of {limit} tokens; set "
                          f"data.block_size to {limit} or less.")
    if not causal:  # masked LMs read lines as documents ([CLS] line [SEP]), as transformers' run_mlm does
        split_lines = lambda docs: [line for d in docs for line in d.splitlines() if line.strip()]  # noqa: E731
        corpus = LabelledData(split_lines(corpus.train), split_lines(corpus.validation) if corpus.validation
                              is not None else None, [], corpus.source, "")
    blocks, tokens = pack_blocks(model.tokenizer, corpus.train, dc.block_size, causal)
    if len(blocks) == 0:
        raise DataError(
            f"The corpus '{corpus.source}' has {tokens} tokens, fewer than one block of data.block_size="
            f"{dc.block_size}. Add text, or lower data.block_size."
        )
    if corpus.validation is not None:
        train_blocks = blocks
        val_blocks, _ = pack_blocks(model.tokenizer, corpus.validation, dc.block_size, causal)
        if len(val_blocks) == 0:
            raise DataError(f"The validation split of '{corpus.source}' is shorter than one block of "
                            f"{dc.block_size} tokens. Lower data.block_size or omit the split.")
    elif whole:
        train_blocks, val_blocks = blocks, blocks
    else:
        if len(blocks) < 2:
            raise DataError(
                f"The corpus '{corpus.source}' fills only one block of {dc.block_size} tokens ({tokens} tokens); "
                "at least two are needed (one to train on, one held out for perplexity). Add text, or lower "
                "data.block_size."
            )
        train_blocks, val_blocks = _split_blocks(blocks, dc.validation_fraction, cfg.train.seed)
    if causal:
        return BlockDataset(train_blocks), BlockDataset(val_blocks)
    return (MaskedBlockDataset(train_blocks, model.tokenizer, cfg.train.seed, random=True),
            MaskedBlockDataset(val_blocks, model.tokenizer, cfg.train.seed, random=False))


def generate(folder: str | Path, prompt: str, max_new_tokens: int = 40, temperature: float = 0.0) -> str:
    """Continue ``prompt`` with a causal LM that hftl trained (full or LoRA output); returns prompt + continuation.

    Greedy at temperature 0 (the default, reproducible); sampled (top-k 50) above it.

    Example:
        >>> generate("outputs/gpt2_finetune", "Once upon a time", max_new_tokens=20)  # doctest: +SKIP
        'Once upon a time there was a ...'
    """
    from hftl.model import load

    model = load(folder)
    if getattr(model, "kind", None) != "causal":
        raise ConfigError(f"'{folder}' is not a causal language model (task causal_lm), so it cannot generate text.")
    return model.generate_text(prompt, max_new_tokens=max_new_tokens, temperature=temperature)
