"""Knowledge distillation: a student learns from a trained teacher's softened predictions.

Set ``distill.teacher`` (an hftl output folder, or the Hub id of one) on any classification run.
The loss is Hinton et al.'s: ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student,
labels)``, with both softmaxes at temperature ``T``. The teacher may be another architecture, even
with other preprocessing (a ResNet-50 for a ResNet-18, a MiniLM for a tiny BERT): its predictions
are computed once, with its own preprocessing, on the un-augmented training examples, and cached
on disk (keyed by the teacher's weights and the exact examples), so each epoch costs only the
student. Evaluation uses the plain loss on the true labels.

Example:
    >>> hftl.train("recipes/configs/image_classification/resnet18_finetune.yaml",
    ...            ["distill.teacher=outputs/resnet50_finetune", "distill.alpha=0.7"])  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import logging

import torch
import torch.nn.functional as F

from hftl.errors import ConfigError
from hftl.methods.base import Method, Setup
from hftl.trainer import classification_loss

logger = logging.getLogger(__name__)


class Distillation(Method):
    """``distill.teacher``: the teacher's logits on each training example join the batch; the loss mixes them in."""

    name, section = "distill", "distill"

    def applies(self, cfg) -> bool:
        return bool(cfg.distill.teacher)

    def after_strategy(self, setup: Setup) -> None:
        d = setup.cfg.distill
        logits, info = teacher_logits(setup.cfg, setup.data, setup.cfg.train.progress)
        setup.train_ds = WithTeacher(setup.train_ds, logits)
        setup.collate, setup.loss_fn = setup.train_ds.collate, distillation_loss(d.temperature, d.alpha)
        setup.card_info["distillation"] = info


def distillation_loss(temperature: float, alpha: float):
    """``loss_fn(logits, batch)`` mixing the teacher's soft targets (``batch["teacher_logits"]``) with the labels.

    Batches without teacher logits (evaluation) get the plain classification loss.

    Example:
        >>> loss_fn = distillation_loss(temperature=2.0, alpha=0.5)
        >>> batch = {"labels": torch.tensor([0]), "teacher_logits": torch.tensor([[2.0, 0.0]])}
        >>> round(loss_fn(torch.tensor([[2.0, 0.0]]), batch).item(), 4)  # student = teacher: only the CE is left
        0.0635
    """

    def loss_fn(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        hard = classification_loss(logits, batch)
        teacher = batch.get("teacher_logits")
        if teacher is None:
            return hard
        t = temperature
        soft = F.kl_div(F.log_softmax(logits.float() / t, -1), F.log_softmax(teacher.float() / t, -1),
                        reduction="batchmean", log_target=True) * t * t  # T^2 keeps the gradients' scale
        return alpha * soft + (1 - alpha) * hard

    return loss_fn


class WithTeacher(torch.utils.data.Dataset):
    """A training dataset whose examples carry the teacher's logits for them (by index)."""

    def __init__(self, dataset, teacher_logits: torch.Tensor):
        if len(dataset) != len(teacher_logits):
            raise ValueError(f"{len(teacher_logits)} teacher predictions for {len(dataset)} examples")
        self.dataset, self.teacher_logits = dataset, teacher_logits
        self.inner_collate = getattr(dataset, "collate", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {"example": self.dataset[index], "teacher_logits": self.teacher_logits[index]}

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def collate(self, items: list[dict]) -> dict:
        """Batches of the wrapped dataset plus ``teacher_logits``; the trainer's evaluation batches (plain
        examples of the validation set, which has no teacher predictions) pass through unchanged."""
        inner = self.inner_collate or torch.utils.data.default_collate
        if "teacher_logits" not in items[0]:
            return inner(items)
        batch = inner([item["example"] for item in items])
        batch["teacher_logits"] = torch.stack([item["teacher_logits"] for item in items])
        return batch


def teacher_logits(cfg, data, progress: bool = True) -> tuple[torch.Tensor, dict]:
    """The teacher's logits on each training example (cached), and what the model card records of it.

    The teacher must predict the same classes, in the same order, as the student's data has.
    """
    from hftl.methods.feature_cache import split_features
    from hftl.model import load
    from hftl.tasks import get_task_impl

    d = cfg.distill
    # The user's own settings decide what the teacher's folder may do, never the folder itself.
    teacher = load(d.teacher, revision=d.teacher_revision, trust_remote_code=cfg.model.trust_remote_code,
                   allow_pickle=cfg.model.allow_pickle)
    if list(teacher.label_names) != list(data.label_names):
        raise ConfigError(f"The teacher '{d.teacher}' predicts {teacher.label_names}, but the data's classes are "
                          f"{data.label_names}. A teacher must have the same classes, in the same order.")
    plain = copy.deepcopy(cfg)
    plain.data.augment = False  # the teacher sees each example once, as evaluation would show it
    task = get_task_impl(plain.task)
    train_ds, _, _ = task.datasets(plain, teacher, data)
    # The backbone's fingerprint leaves the head out (probes replace it); a teacher's predictions depend on it.
    head = hashlib.sha256(b"".join(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                                   for t in teacher.head.state_dict().values())).hexdigest()[:16]
    from accelerate import PartialState

    with PartialState().main_process_first():  # rank 0 computes and caches; the other ranks then read the cache
        logits, _, hit = split_features(teacher, train_ds, data, "train", lambda pool: task.datasets(plain, teacher, pool)[0],
                                        progress, fingerprint=f"{teacher.fingerprint()}|{head}", output="logits",
                                        per_example=task.features_per_example)
    accuracy = float((logits.argmax(-1) == torch.as_tensor(data.train["label"])).float().mean())
    logger.info("Teacher %s: %.3f accuracy on the %d training examples%s", d.teacher, accuracy, len(logits),
                " (cached predictions)" if hit else "")
    info = {"teacher": str(d.teacher), "teacher_train_accuracy": round(accuracy, 4),
            "temperature": d.temperature, "alpha": d.alpha}
    return logits, info
