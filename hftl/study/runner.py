"""Running a study: its sources, every arm's folds at every label budget (searched, trained, recorded), the analysis and the winner.

:func:`run_study` reads the config (:mod:`hftl.study.config`) and hands it to :class:`_Study`, which
trains on the folds of :mod:`hftl.study.folds`, compares the arms (:mod:`hftl.study.stats`),
keeps the winner's best fold and writes study.json, report.md and the plots (:mod:`hftl.study.report`).
Each finished fold leaves a small record in ``records/``: a rerun with the same config skips it (resume).

(Over 500 lines: one class, ``_Study``, carries one study's state through its steps, in order.)

Example:
    >>> report = run_study("recipes/configs/study/negative_transfer.yaml", ["study.folds=3"])  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from hftl.config import Config, parse_overrides
from hftl.errors import ConfigError, DataError
from hftl.study.config import (
    PRETRAIN_PREFIX,
    Arm,
    PretrainSource,
    StudyConfig,
    _merge,
    load_study_config,
    study_config_from_dict,
)
from hftl.study.folds import budget_subset, make_folds, stratified_take
from hftl.study.report import (
    StudyReport,
    _budget_tag,
    _pct,
    add_study_to_card,
    card_section,
    render_markdown,
    write_plots,
)
from hftl.study.search import choose, describe_values, inner_split
from hftl.study.stats import compare_paired, describe_scores, fold_metrics, higher_is_better, selection_metric

logger = logging.getLogger(__name__)

# What a fold's run folder keeps once its weights are no longer needed (the record holds the numbers).
KEEP_LIGHT = {"metrics.json", "log.jsonl", "hftl_config.yaml", "logs"}  # logs/hftl.log: the fold's log lines


# ------------------------------------------------------------------------------------------- helpers

def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary name and rename into place: a crash never leaves a half-written record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None



def _config_key(cfg: Config) -> dict:
    """What in a run config decides its result (not where it writes or whether it shows a bar)."""
    d = cfg.to_dict()
    d.pop("output_dir", None)
    d.pop("hub", None)
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("progress", "resume", "tracker")}
    return d


def _lighten(folder: Path) -> None:
    """Drop a finished fold's weights and checkpoints; keep its small logs."""
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if child.name in KEEP_LIGHT:
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()



# ------------------------------------------------------------------------------------------- the study

class _Study:
    """Runs one study; split out of :func:`run_study` so each step stays short."""

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self.s = cfg.study
        self.out = cfg.output_dir
        self.records = self.out / "records"
        self.trained = 0
        self.skipped = 0
        self.source_keys: dict[str, str] = {}
        self.source_info: dict[str, dict] = {}
        self.budgets = sorted({float(b) for b in self.s.label_budgets}) or [1.0]
        self.ranking: dict = {}  # study.rank_first: the sources' scores, the kept sources, the arms left out
        self.metrics = fold_metrics(cfg.base.task, cfg.base)
        self.sign = 1 if higher_is_better(self.s.metric) else -1  # the best arm and fold maximise sign * metric
        # What the choices (searched values, the kept fold, the winner) are made by: never a target-domain score.
        self.choose_by = selection_metric(self.s.metric)
        # Arms trained on target labels (domain_adapt.method=oracle): the ceiling, reported apart, never chosen.
        self.references = [a.name for a in cfg.arms if a.config.domain_adapt.method == "oracle"]

    # -- sources -----------------------------------------------------------------------------
    def source_dir(self, name: str) -> Path:
        return self.out / "sources" / name

    def resolve(self, cfg: Config) -> Config:
        """Replace ``model.id`` / ``model.init_from: pretrain:NAME`` with that source's folder."""
        cfg = copy.deepcopy(cfg)
        if cfg.model.id.startswith(PRETRAIN_PREFIX):
            cfg.model.id = str(self.source_dir(cfg.model.id[len(PRETRAIN_PREFIX):]))
        if (cfg.model.init_from or "").startswith(PRETRAIN_PREFIX):
            cfg.model.init_from = str(self.source_dir(cfg.model.init_from[len(PRETRAIN_PREFIX):]))
        return cfg

    def pretrain(self, source: PretrainSource, progress) -> None:
        from hftl import api
        from hftl.data import load_labelled_data

        cfg = copy.deepcopy(source.config)
        folder = self.source_dir(source.name)
        cfg.output_dir = str(folder)
        cfg.train.resume = None
        cfg.train.save_checkpoints = False  # an interrupted pretraining restarts
        cfg.train.progress = False  # one progress display for the study
        key = _hash({"config": _config_key(cfg), "shuffle_labels": source.shuffle_labels})
        record_path = self.records / f"pretrain__{source.name}.json"
        record = _read_json(record_path)
        self.source_keys[source.name] = key
        if record and record.get("key") == key and (folder / "hftl.json").is_file():
            logger.info("Source '%s' already pretrained (%s); skipping", source.name, folder)
            self.source_info[source.name] = record
            self.skipped += 1
            return
        progress.set_description(f"pretrain source '{source.name}'")
        shutil.rmtree(folder, ignore_errors=True)  # an interrupted pretraining restarts cleanly
        data = load_labelled_data(cfg.data, cfg.task, cfg.train.seed)
        if source.shuffle_labels:
            data = _shuffled(data, cfg.train.seed)
        started = time.perf_counter()
        result = api.train(cfg, data=data)
        record = {"key": key, "name": source.name, "output_dir": str(folder), "metrics": result.metrics,
                  "data": data.source, "classes": data.label_names, "num_train": len(data.train),
                  "shuffle_labels": source.shuffle_labels, "model": source.config.model.id,
                  "strategy": cfg.strategy.name, "epochs": cfg.train.epochs,
                  "seconds": round(time.perf_counter() - started, 2)}
        _write_json_atomic(record_path, record)
        self.source_info[source.name] = record
        self.trained += 1

    def rank_sources(self) -> None:
        """``study.rank_first: k``: keep the arms whose source is among the k best by LogME on the pool.

        Each distinct source of a transfer arm is scored with its arm's config (its preprocessing) on the
        whole pool; the baseline and scratch arms always run. Nothing is trained, but the scores see
        every fold's labels, so the choice of arms is not itself cross-validated (the report says so).
        """
        from hftl.transferability import rank

        transfer = [a for a in self.cfg.arms if a.name != self.s.baseline and a.strategy != "scratch"]
        first_arm: dict = {}
        for arm in transfer:
            first_arm.setdefault(self.resolve(arm.config).model.id, arm)
        if not first_arm:
            return
        rows = [rank(self.resolve(arm.config), [source], data=self.pool)[0] for source, arm in first_arm.items()]
        rows.sort(key=lambda r: -r["logme"])
        kept = [r["candidate"] for r in rows[: self.s.rank_first]]
        dropped = [a.name for a in transfer if self.resolve(a.config).model.id not in kept]
        for r in rows:
            r["arms"] = [a.name for a in transfer if self.resolve(a.config).model.id == r["candidate"]]
        self.ranking = {"k": self.s.rank_first, "sources": rows, "kept": kept, "dropped_arms": dropped}
        self.cfg = dataclasses.replace(self.cfg, arms=[a for a in self.cfg.arms if a.name not in dropped])
        logger.info("study.rank_first=%d: kept %s; not run: %s", self.s.rank_first, ", ".join(kept),
                    ", ".join(dropped) or "none")

    # -- data and folds ----------------------------------------------------------------------
    def load_pool(self):
        import datasets

        from hftl.data import FoldOrigin, LabelledData, load_labelled_data

        base = self.resolve(self.cfg.base)
        data = load_labelled_data(base.data, base.task, base.train.seed)
        pool = datasets.concatenate_datasets([data.train, data.validation]) if len(data.validation) else data.train
        fingerprint = data.fingerprint
        # The pool's rows in order: data.train, then data.validation. The refit at the whole budget trains on
        # that same split, so the saved winner is the model `hftl train` gives with the winning values.
        self.base_split = (list(range(len(data.train))), list(range(len(data.train), len(pool))))
        self.base_carved = data.carved  # hftl train refits (probe_refit, train.refit) only on a split it carved
        if self.s.max_examples and self.s.max_examples < len(pool):
            self.base_split = None  # a subsample: no split of hftl train's to keep
            keep = stratified_take(self._strata(pool["label"], data.regression), self.s.max_examples, self.s.seed)
            pool = pool.select(keep)
            fingerprint = _hash([fingerprint, "max_examples", self.s.max_examples, self.s.seed])
        self.pool = LabelledData(pool, pool.select([]), data.label_names, data.source, fingerprint, data.skipped,
                                 data.regression)
        self.pool.origin = FoldOrigin(self.pool, {"train": list(range(len(pool)))})  # its own rows: tokenized once
        self.labels = np.asarray(pool["label"])
        self.strata = self._strata(self.labels, data.regression)
        self.folds, self.fold_note = make_folds(self.labels, self.s.folds, self.s.seed, data.label_names,
                                                self.s.allow_fewer_folds, regression=data.regression)
        logger.info("Study pool: %d examples, %s, %d folds", len(pool),
                    f"target '{data.label_names[0]}'" if data.regression else f"{len(data.label_names)} classes",
                    len(self.folds))

    @staticmethod
    def _strata(labels, regression: bool) -> np.ndarray:
        """What subsets are stratified by: the classes, or one stratum for real-valued targets."""
        return np.zeros(len(labels), dtype=int) if regression else np.asarray(labels)

    def fold_indices(self, k: int, budget: float) -> tuple[list[int], list[int]]:
        """Pool indices of fold ``k``'s training examples (at ``budget``) and of its held-out examples."""
        train_idx, val_idx = self.folds[k]
        return budget_subset(train_idx, self.strata, budget, self.s.seed * 1000 + k), val_idx

    def fold_data(self, k: int, budget: float):
        train_idx, val_idx = self.fold_indices(k, budget)
        fingerprint = _hash([self.pool.fingerprint, "fold", k, len(self.folds), budget, self.s.seed, train_idx, val_idx])
        return self.subset(train_idx, val_idx, fingerprint), fingerprint

    def subset(self, train_idx: list[int], val_idx: list[int], fingerprint: str):
        """LabelledData of these pool examples: ``train_idx`` to train on, ``val_idx`` to score on."""
        from hftl.data import FoldOrigin, LabelledData

        pool = self.pool.train
        # The origin lets frozen features and teacher predictions be computed once for the pool, not per fold.
        origin = FoldOrigin(self.pool, {"train": list(train_idx), "validation": list(val_idx)})
        return LabelledData(pool.select(train_idx), pool.select(val_idx), self.pool.label_names, self.pool.source,
                            fingerprint, self.pool.skipped, self.pool.regression, origin=origin)

    def inner_data(self, k: int, budget: float):
        """The inner split of fold ``k``'s training examples (never its held-out fold): data, fingerprint, indices."""
        train_idx, _ = self.fold_indices(k, budget)
        # Seeded by study seed, fold and budget only: every arm chooses on the same inner split (paired).
        inner_tr, inner_va = inner_split(train_idx, self.strata, self.s.search_validation,
                                         [self.s.seed, k, round(budget * 10**6), 17])
        fingerprint = _hash([self.pool.fingerprint, "inner", k, len(self.folds), budget, self.s.seed,
                             self.s.search_validation, inner_tr, inner_va])
        return self.subset(inner_tr, inner_va, fingerprint), fingerprint, inner_tr, inner_va

    # -- one fold of one arm -------------------------------------------------------------------
    def run_dir(self, arm: Arm, budget: float, k: int) -> Path:
        return self.out / "runs" / arm.name / _budget_tag(budget) / f"fold{k}"

    def record_path(self, arm: Arm, budget: float, k: int) -> Path:
        return self.records / f"{arm.name}__{_budget_tag(budget)}__fold{k}.json"

    def fold_config(self, arm: Arm, budget: float, k: int, config: Config | None = None,
                    output_dir: Path | None = None) -> Config:
        cfg = self.resolve(config or arm.config)
        cfg.output_dir = str(output_dir or self.run_dir(arm, budget, k))
        cfg.train.seed = self.cfg.base.train.seed + k  # a fold's seed is the same for every arm: paired
        cfg.train.resume = None
        cfg.train.progress = False  # one bar for the study (arm, budget, fold), not one per fold
        # A study resumes fold by fold (its records), so checkpoints (weights + optimizer state, every epoch by
        # default) would only cost time and disk: the fold writes none.
        cfg.train.save_checkpoints = False
        # A fold's validation data is its held-out test fold: choosing an epoch on it (early stopping, best-epoch
        # restore) would select on the test data. Every fold trains its full budget and keeps its last epoch;
        # choices are made by the search, on an inner split of the training fold.
        cfg.train.patience = 0
        cfg.train.keep_best = False
        return cfg

    def run_key(self, arm: Arm, budget: float, k: int, data_fp: str, config: Config | None = None,
                search: dict | None = None) -> str:
        source = arm.config.model.id
        source_key = self.source_keys.get(source[len(PRETRAIN_PREFIX):]) if source.startswith(PRETRAIN_PREFIX) else None
        key = {"config": _config_key(self.fold_config(arm, budget, k, config)), "data": data_fp,
               "source": source_key, "folds": len(self.folds)}
        init = arm.config.model.init_from or ""
        if init.startswith(PRETRAIN_PREFIX):  # a retrained source retrains the arms that start from it
            key["init_source"] = self.source_keys.get(init[len(PRETRAIN_PREFIX):])
        if search:  # what the choice was made among (an unsearched fold keeps the key it always had)
            key["search"] = search
        return _hash(key)

    def train_once(self, cfg: Config, data) -> tuple[dict, list, float]:
        """Train one run (from its start) and return its metrics, history and seconds."""
        from hftl import api

        folder = Path(cfg.output_dir)
        shutil.rmtree(folder, ignore_errors=True)  # a run interrupted mid-training restarts from its start
        started = time.perf_counter()
        result = api.train(cfg, data=data)
        seconds = time.perf_counter() - started
        if self.s.metric not in result.metrics:
            raise ConfigError(
                f"study.metric '{self.s.metric}' was not computed by the run (it computed: "
                f"{', '.join(result.metrics)}). Choose one of those."
            )
        self.trained += 1
        return {m: float(v) for m, v in result.metrics.items()}, result.history, seconds

    def search(self, arm: Arm, budget: float, k: int, progress=None) -> tuple[Config, dict]:
        """Choose the arm's values for fold ``k`` on the inner split of its training examples.

        Returns the run config to train on the whole training fold and what the search did (for the
        record). Each candidate has its own small record, so an interrupted search resumes too.
        """
        if len(arm.candidates) == 1:  # nothing to choose (no grid, or one value): no inner training
            values = arm.candidates[0][0]
            return arm.config, {"grid": arm.grid, "chosen": values, "candidates": []} if values else {}
        try:
            data, data_fp, inner_tr, inner_va = self.inner_data(k, budget)
        except DataError as e:
            # E.g. one example per class at a small label budget. Every arm meets the same split, so every
            # arm falls back alike, at its configured values; the report says so for that fold.
            logger.warning("%s (arm %s, budget %s, fold %d): trained at its configured values", e, arm.name,
                           _pct(budget), k)
            return arm.config, {"grid": arm.grid, "chosen": {}, "candidates": [], "skipped": str(e)}
        tag = _budget_tag(budget)
        results = []
        for i, (values, config) in enumerate(arm.candidates):
            folder = self.out / "search" / arm.name / tag / f"fold{k}" / f"c{i}"
            cfg = self.fold_config(arm, budget, k, config, output_dir=folder)
            key = self.run_key(arm, budget, k, data_fp, config)
            path = self.records / "search" / f"{arm.name}__{tag}__fold{k}__c{i}.json"
            record = _read_json(path)
            if record and record.get("key") == key:
                self.skipped += 1
            else:
                if progress is not None:
                    progress.set_description(f"arm {arm.name} fold {k + 1}/{len(self.folds)}: search "
                                             f"{i + 1}/{len(arm.candidates)}")
                metrics, history, seconds = self.train_once(cfg, data)
                _lighten(folder)  # a candidate's weights are never used again; its log stays
                record = {"key": key, "values": values, "metrics": metrics, "seconds": round(seconds, 2),
                          "epochs": len(history), "output_dir": str(folder)}
                _write_json_atomic(path, record)
            results.append(record)
        best = choose([r["metrics"] for r in results], self.choose_by, higher_is_better(self.choose_by))
        # A choice at the end of its grid says the best value may lie beyond it: say so, do not widen silently.
        edge = [key for key, value in results[best]["values"].items()
                if len(arm.grid.get(key, [])) > 2 and value in (min(arm.grid[key]), max(arm.grid[key]))
                and all(isinstance(v, (int, float)) for v in arm.grid[key])]
        if edge:
            logger.warning("Arm %s fold %d chose %s at the end of its grid; consider a wider study.search grid",
                           arm.name, k, ", ".join(f"{key}={results[best]['values'][key]:g}" for key in edge))
        info = {"grid": arm.grid, "chosen": results[best]["values"], "metric": self.choose_by,
                "validation_share": self.s.search_validation, "inner_train": inner_tr, "inner_validation": inner_va,
                "candidates": [{"values": r["values"], "metrics": r["metrics"], "seconds": r["seconds"]}
                               for r in results],
                "seconds": round(sum(r["seconds"] for r in results), 2), "at_grid_edge": edge}
        return arm.candidates[best][1], info

    def run_fold(self, arm: Arm, budget: float, k: int, force: bool = False, progress=None) -> dict:
        config, search = self.search(arm, budget, k, progress)
        data, data_fp = self.fold_data(k, budget)
        spec = {"grid": arm.grid, "validation": self.s.search_validation} if search.get("candidates") else None
        key = self.run_key(arm, budget, k, data_fp, config, spec)
        path = self.record_path(arm, budget, k)
        record = _read_json(path)
        if record and record.get("key") == key and not force:
            self.skipped += 1
            return record
        if record and not force:
            logger.warning("Record %s was made with another config or data; training that fold again", path)
        cfg = self.fold_config(arm, budget, k, config)
        metrics, history, seconds = self.train_once(cfg, data)
        train_idx, test_idx = self.fold_indices(k, budget)
        record = {"key": key, "arm": arm.name, "strategy": arm.strategy, "budget": budget, "fold": k,
                  "metrics": metrics, "history": history,
                  "num_train": len(data.train), "num_validation": len(data.validation),
                  "chosen": search.get("chosen", {}), "search": search,
                  "train_indices": train_idx, "test_indices": test_idx,
                  "seed": cfg.train.seed, "seconds": round(seconds, 2), "output_dir": str(cfg.output_dir),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_json_atomic(path, record)
        return record

    def keep_best_weights(self, arm: Arm, budget: float, records: dict) -> None:
        """Keep the weights of this arm's best fold so far at the full budget; lighten the others."""
        if self.s.keep_fold_models:
            return
        done = {k: r for k, r in records.items() if r is not None}
        best = None
        # Kept under study.winner=refit too: a refit that cannot run falls back to this fold.
        if budget == max(self.budgets) and self.s.winner != "none" and done:
            best = min(done, key=lambda k: (-self.sign * done[k]["metrics"][self.choose_by], k))
        for k in done:
            if k != best:
                _lighten(self.run_dir(arm, budget, k))

    # -- the folds, one after another or at once -------------------------------------------------
    def _done(self, progress, arm_name: str, budget: float, k: int, record: dict) -> None:
        budget_txt = f" budget {_pct(budget)}" if len(self.budgets) > 1 else ""
        value = record["metrics"][self.s.metric]
        logger.info("%s%s fold %d/%d: %s %.4f", arm_name, budget_txt, k + 1, len(self.folds), self.s.metric, value)
        progress.set_postfix({self.s.metric: f"{value:.3f}"})
        progress.update(1)

    def run_serial(self, progress) -> dict:
        all_records: dict = {}
        for arm in self.cfg.arms:
            for budget in self.budgets:
                recs: dict = {k: None for k in range(len(self.folds))}
                for k in range(len(self.folds)):
                    budget_txt = f" budget {_pct(budget)}" if len(self.budgets) > 1 else ""
                    progress.set_description(f"arm {arm.name}{budget_txt} fold {k + 1}/{len(self.folds)}")
                    recs[k] = self.run_fold(arm, budget, k, progress=progress)
                    self.keep_best_weights(arm, budget, recs)
                    self._done(progress, arm.name, budget, k, recs[k])
                all_records[(arm.name, budget)] = recs
        return all_records

    def run_parallel(self, progress) -> dict:
        """``study.workers`` / ``study.backend``: every fold of every arm as an independent job (hftl.study.parallel)."""
        from hftl.study.parallel import run_jobs

        jobs = [(arm.name, budget, k) for arm in self.cfg.arms for budget in self.budgets for k in range(len(self.folds))]
        progress.set_description(f"{len(jobs)} trainings, {self.s.workers} at once ({self.s.backend})")
        done = run_jobs(self, jobs, lambda job, record: self._done(progress, *job, record))
        all_records: dict = {}
        for arm in self.cfg.arms:  # in the serial order, so the report and study.json read the same
            for budget in self.budgets:
                recs = {k: done[(arm.name, budget, k)] for k in range(len(self.folds))}
                self.keep_best_weights(arm, budget, recs)
                all_records[(arm.name, budget)] = recs
        return all_records

    # -- the whole study -----------------------------------------------------------------------
    def run(self) -> StudyReport:
        from hftl.console import run_log

        self.out.mkdir(parents=True, exist_ok=True)
        with run_log(self.out):  # under the command: STUDY_DIR/logs/hftl.log gets every INFO line
            return self._run()

    def _run(self) -> StudyReport:
        from contextlib import nullcontext

        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        from hftl.console import console_settings

        started = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        show = self.cfg.base.train.progress
        # Log lines go through tqdm while the bar is shown, so they do not tear it into pieces (the command's own
        # console handler, hftl.console, does so already, and shows warnings only).
        redirect = show and not console_settings()["on"]
        with logging_redirect_tqdm() if redirect else nullcontext(), \
                tqdm(total=len(self.cfg.pretrain), desc="study", unit="run", disable=not show,
                     dynamic_ncols=True) as progress:
            for source in self.cfg.pretrain:
                self.pretrain(source, progress)
                progress.update(1)
            self.load_pool()
            if self.s.rank_first:
                progress.set_description("rank sources")
                self.rank_sources()
            progress.reset(total=len(self.cfg.arms) * len(self.budgets) * len(self.folds))
            if self.s.workers > 1 or self.s.backend != "local":
                all_records = self.run_parallel(progress)
            else:
                all_records = self.run_serial(progress)
        report = self.analyse(all_records)
        report.seconds = time.perf_counter() - started
        self.save_winner(report, all_records)
        self.write(report, all_records)
        return report

    def analyse(self, all_records: dict) -> StudyReport:
        s = self.s
        arms = [a.name for a in self.cfg.arms]
        scores: dict = {a: {} for a in arms}
        stats: dict = {a: {} for a in arms}
        for (arm, budget), recs in all_records.items():
            tag = _budget_tag(budget)
            scores[arm][tag] = {m: [recs[k]["metrics"][m] for k in sorted(recs)] for m in self.metrics}
            stats[arm][tag] = {m: describe_scores(v) for m, v in scores[arm][tag].items()}
        comparisons: dict = {}
        for arm in arms:
            if arm == s.baseline or arm in self.references:  # an oracle is the ceiling, reported apart
                continue
            comparisons[arm] = {}
            for budget in self.budgets:
                tag = _budget_tag(budget)
                recs = all_records[(arm, budget)]
                ratio = float(np.mean([recs[k]["num_validation"] / recs[k]["num_train"] for k in recs]))
                comparisons[arm][tag] = compare_paired(
                    scores[arm][tag][s.metric], scores[s.baseline][tag][s.metric], alpha=s.alpha,
                    higher_is_better=higher_is_better(s.metric), test=s.test, test_train_ratio=ratio, arm=arm,
                    baseline=s.baseline, metric=s.metric)
        return StudyReport(
            name=s.name or self.out.name, output_dir=self.out, metric=s.metric, baseline=s.baseline, arms=arms,
            strategies={a.name: a.strategy for a in self.cfg.arms}, budgets=self.budgets, folds=len(self.folds),
            fold_note=self.fold_note, scores=scores, stats=stats, comparisons=comparisons,
            trained=self.trained, skipped=self.skipped, n_examples=len(self.labels),
            label_names=list(self.pool.label_names), task=self.cfg.base.task, fold_metrics=list(self.metrics),
            higher_is_better=higher_is_better(s.metric),
            searched={a.name: a.grid for a in self.cfg.arms},
            chosen={arm: {_budget_tag(b): [all_records[(arm, b)][k].get("chosen", {}) for k in sorted(all_records[(arm, b)])]
                          for b in self.budgets} for arm in arms},
            budget_sizes={_budget_tag(b): float(np.mean([r["num_train"] for r in all_records[(s.baseline, b)].values()]))
                          for b in self.budgets},
            ranking=self.ranking, references=list(self.references))

    # -- the winner's model --------------------------------------------------------------------
    def save_winner(self, report: StudyReport, all_records: dict) -> None:
        """Save the winning arm's model to OUTPUT_DIR/model, card and all (``study.winner``).

        ``refit`` (the default) trains the winner again on the whole pool, as scikit-learn's refit does:
        the cross-validated estimate describes that procedure, and a fold's model saw only part of the
        data. ``best_fold`` copies the winner's best fold instead (no extra training; its card's metrics
        are on examples it never saw).
        """
        if self.s.winner == "none":
            return
        budget = max(self.budgets)
        tag = _budget_tag(budget)
        # Chosen by the selection metric (a target-domain study: the source's held-out folds), never an oracle.
        candidates = [a for a in report.arms if a not in self.references]
        winner = max(candidates, key=lambda a: (self.sign * report.stats[a][tag][self.choose_by]["mean"],
                                                -report.arms.index(a)))
        recs = all_records[(winner, budget)]
        arm = next(a for a in self.cfg.arms if a.name == winner)
        refit = None
        if self.s.winner == "refit":
            try:
                refit = self.refit(arm, budget, recs)
            except DataError as e:  # e.g. a pool too small for a stratified validation split: keep the study's result
                logger.warning("study.winner=refit: %s Saving the best fold of %s instead.", e, winner)
        if refit is not None:
            folder, report.refit = refit
        else:
            fold = min(recs, key=lambda k: (-self.sign * recs[k]["metrics"][self.choose_by], k))
            folder = self.run_dir(arm, budget, fold)
            if not (folder / "hftl.json").is_file():
                # Its weights were lightened in an earlier session (e.g. before an arm was added): retrain that fold.
                logger.info("Retraining %s fold %d to save it (its weights were not kept)", winner, fold)
                self.run_fold(arm, budget, fold, force=True)
            report.winner_fold = fold
        target = self.out / "model"
        tmp = self.out / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns("checkpoints"))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        report.winner, report.model_dir = winner, target
        report.trained, report.skipped = self.trained, self.skipped  # the refit counts too
        if not self.s.keep_fold_models:
            for other in self.cfg.arms:
                for k in range(len(self.folds)):
                    if (other.name, k) != (winner, report.winner_fold):
                        _lighten(self.run_dir(other, budget, k))

    def refit_values(self, arm: Arm, recs: dict) -> tuple[dict, Config]:
        """The arm's values for the refit: the candidate with the best mean inner-validation score over the folds.

        Every fold scored every candidate on its inner split (never its held-out fold), so this is
        GridSearchCV's rule on the nested search's own numbers, at no extra training.
        """
        if len(arm.candidates) == 1:
            return arm.candidates[0]
        scored = [r["search"]["candidates"] for r in recs.values() if r.get("search", {}).get("candidates")]
        if not scored:  # every fold fell back to its configured values (too few examples for an inner split)
            return {}, arm.config
        means = []
        for i in range(len(arm.candidates)):
            keys = set.intersection(*(set(fold[i]["metrics"]) for fold in scored))
            means.append({m: float(np.mean([fold[i]["metrics"][m] for fold in scored])) for m in keys})
        return arm.candidates[choose(means, self.choose_by, higher_is_better(self.choose_by))]

    def refit(self, arm: Arm, budget: float, recs: dict) -> tuple[Path, dict]:
        """Train ``arm`` on the whole pool (at ``budget``) as ``hftl train`` would: its own validation split,
        early stopping and best-epoch restore as configured.

        At the whole budget the split is hftl train's own (the pool is its training split, then its validation
        split), so the saved model is the one `hftl train` gives with the winning values. Otherwise (a label
        budget, study.max_examples, an arm with another seed or validation_fraction) data.validation_fraction
        of the examples is carved out again, stratified and seeded.

        Resumes like a fold: a record with the same key skips the training.
        """
        from hftl.data import stratified_split

        values, config = self.refit_values(arm, recs)
        cfg = self.resolve(config)
        cfg.output_dir = str(self.out / "refit" / arm.name)
        cfg.train.resume, cfg.train.progress, cfg.train.save_checkpoints = None, False, False
        examples = budget_subset(list(range(len(self.labels))), self.strata, budget, self.s.seed * 1000 + len(self.folds))
        base = self.cfg.base
        if (budget >= 1 and self.base_split and self.base_split[1] and cfg.train.seed == base.train.seed
                and cfg.data.validation_fraction == base.data.validation_fraction):
            train_idx, val_idx = self.base_split  # hftl train's own split, in its order
            carved = self.base_carved
        else:
            # Positions within ``examples``; regression targets are floats, which stratified_split splits unstratified.
            train_at, val_at = stratified_split(self.labels[examples], cfg.data.validation_fraction, cfg.train.seed)
            train_idx, val_idx = [examples[i] for i in train_at], [examples[i] for i in val_at]
            carved = True
        fingerprint = _hash([self.pool.fingerprint, "refit", budget, self.s.seed, train_idx, val_idx])
        data = self.subset(train_idx, val_idx, fingerprint)
        data.carved = carved  # hftl held its validation split out: a solved probe is refitted on all of it
        key = _hash({"config": _config_key(cfg), "data": fingerprint, "values": values})
        path = self.records / f"refit__{arm.name}.json"
        record = _read_json(path)
        if record and record.get("key") == key and (Path(cfg.output_dir) / "hftl.json").is_file():
            self.skipped += 1
        else:
            logger.info("Refitting the winner %s on %d examples of the pool (%s)", arm.name, len(examples),
                        describe_values(values) if values else "its configured values")
            metrics, history, seconds = self.train_once(cfg, data)
            record = {"key": key, "arm": arm.name, "values": values, "num_train": len(train_idx),
                      "num_validation": len(val_idx), "metrics": metrics, "epochs": len(history),
                      "seconds": round(seconds, 2)}
            _write_json_atomic(path, record)
        return Path(cfg.output_dir), {k: record[k] for k in ("values", "num_train", "num_validation", "metrics")}

    # -- files ---------------------------------------------------------------------------------
    def write(self, report: StudyReport, all_records: dict) -> None:
        plots = write_plots(report, self.out)
        report.files = {"report": self.out / "report.md", "study.json": self.out / "study.json",
                        **{f"plot ({p.stem.replace('_', ' ')})": p for p in plots}}
        if report.model_dir:
            report.files["model"] = report.model_dir
        markdown = render_markdown(report, self.cfg, all_records, self.source_info, plots)
        (self.out / "report.md").write_text(markdown)
        if report.model_dir:
            add_study_to_card(report.model_dir / "README.md", card_section(report))
        data = {
            **report.to_dict(),
            "config": self.cfg.raw,
            "sources": self.source_info,
            "folds_detail": [{"fold": k, "num_train": len(tr), "num_validation": len(va)}
                             for k, (tr, va) in enumerate(self.folds)],
            "runs": [r for recs in all_records.values() for r in recs.values()],
            "scores": report.scores,
        }
        _write_json_atomic(self.out / "study.json", data)


def _shuffled(data, seed: int):
    """The same examples with their labels permuted (seeded): a source that learned nothing transferable."""
    from hftl.data import LabelledData

    rng = np.random.default_rng(seed)

    def permute(ds):
        labels = np.asarray(ds["label"])
        return ds.remove_columns("label").add_column("label", rng.permutation(labels).tolist())

    return LabelledData(permute(data.train), permute(data.validation), data.label_names,
                        f"{data.source} (labels shuffled)", _hash([data.fingerprint, "shuffled", seed]), data.skipped,
                        data.regression)


# ------------------------------------------------------------------------------------------- entry point

def run_study(config: StudyConfig | str | Path | dict | None, overrides: list[str] | None = None) -> StudyReport:
    """Run a cross-validated transfer-vs-scratch study; returns its :class:`StudyReport`.

    ``config`` is a study YAML path, a mapping of the same shape, or a :class:`StudyConfig`. A rerun
    with the same config skips every fold already finished (resume), so an interrupted study
    continues where it stopped.

    Example:
        >>> report = run_study("recipes/configs/study/negative_transfer.yaml")  # doctest: +SKIP
        >>> report.verdict("probe_from_shuffled")  # doctest: +SKIP
        'negative transfer'
    """
    if isinstance(config, StudyConfig):
        cfg = config
        if overrides:
            cfg = study_config_from_dict(_merge(cfg.raw, parse_overrides(overrides)))
    elif isinstance(config, dict):
        cfg = study_config_from_dict(_merge(config, parse_overrides(overrides or [])))
    else:
        cfg = load_study_config(config, overrides)
    return _Study(cfg).run()
