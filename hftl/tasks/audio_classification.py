"""Audio classification: a transformers audio encoder (wav2vec2, HuBERT, AST, Whisper's encoder) with a new head.

Clips are decoded, resampled to the model's rate and cropped to ``data.max_duration`` seconds
(a random window in training with ``data.augment``, the start otherwise); see hftl.audio.

Example:
    >>> hftl.train(None, ["task=audio_classification", "model.id=facebook/wav2vec2-base", "data.id=clips/"])  # doctest: +SKIP
"""

from __future__ import annotations

from hftl.tasks.base import LabelledTask, library_error


class AudioClassification(LabelledTask):
    features_per_example = False  # clips are padded per batch, and wav2vec2's group norm sees the padding

    def create_model(self, ref, label_names, *, pretrained=True, **kwargs):
        from hftl.backbones.hf_audio import AudioClassifier

        if ref.library != "transformers":
            raise library_error(self.name, ref, "transformers audio", "a Hub id (facebook/wav2vec2-base, "
                                "MIT/ast-finetuned-audioset-10-10-0.4593, openai/whisper-tiny) or a save_pretrained folder")
        return AudioClassifier.create(ref, label_names, pretrained=pretrained, **kwargs)

    def build_model(self, cfg, data):
        """The model; Whisper's 30-s window shortened to the longest clip it will see (see hftl.backbones.hf_audio)."""
        from hftl.audio import longest_clip_seconds

        model, ref = super().build_model(cfg, data)
        if hasattr(model, "fit_window"):
            model.fit_window(min(cfg.data.max_duration, longest_clip_seconds(data) or cfg.data.max_duration))
        return model, ref

    def datasets(self, cfg, model, data, whole: bool = False):
        from hftl.audio import build_audio_datasets

        return build_audio_datasets(cfg, model, data)

    def export_inputs(self, model, batch_size: int = 2) -> tuple[dict, dict]:
        import torch

        rate, seconds = model.sampling_rate, model.max_duration or 1.0
        gen = torch.Generator().manual_seed(batch_size)
        # Clips are fitted to data.max_duration before the feature extractor: the time axis is fixed.
        waves = [0.1 * torch.randn(int(seconds * rate), generator=gen).numpy() for _ in range(batch_size)]
        batch = {k: v for k, v in model.encode_audio(waves).items() if isinstance(v, torch.Tensor)}
        return batch, {k: {0: "batch"} for k in batch}

    def encode(self, model, inputs: list) -> dict:
        from hftl.audio import fit_length, read_audio

        rate, seconds = model.sampling_rate, model.max_duration or 10.0
        return model.encode_audio([fit_length(read_audio(p, rate, max_seconds=seconds), int(seconds * rate))
                                   for p in inputs])
