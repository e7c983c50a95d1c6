"""Reproducible training recipes. ``lesionlens train --recipe default`` (or ``make train-default``).

The default recipe trains the demonstration CT nodule model on synthetic chest CT phantoms:

1. generate ``train + val`` phantoms from fixed seed ranges (cached as .npy under the work dir);
2. build a 2.5D training set (HU stacks at −2.5/0/+2.5 mm, boxes from the exact label maps,
   negatives 1:1, patient-level split);
3. train the ``n`` detector;
4. write ``test`` phantoms from a seed range never used in training or tuning as real DICOM
   series, evaluate FROC/CPM through the full ingest path;
5. export ONNX, write the model card, and install the package (when asked) as ``default``.

The model it makes is for demonstration only: trained on synthetic data, **not for clinical use**.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lesionlens.errors import ConfigError

if TYPE_CHECKING:
    from lesionlens.engine.config import TrainConfig

NOTICE = ("Demonstration model trained on synthetic CT phantoms only. Not a medical device; "
          "not for clinical use.")


@dataclass
class DefaultRecipe:
    """Sizes are chosen so the recipe finishes in well under an hour on a 2-core CPU."""

    train_studies: int = 36
    val_studies: int = 4
    test_studies: int = 30
    train_seed0: int = 100_000  # train/val seeds: train_seed0 + i
    test_seed0: int = 900_000  # held-out test seeds: never used in training or tuning
    slice_spacings_mm: tuple[float, ...] = (1.0, 1.25, 2.0, 2.5)
    test_slice_spacings_mm: tuple[float, ...] = (1.0, 1.25, 2.0, 2.5)
    context_mm: tuple[float, ...] = (-2.5, 0.0, 2.5)
    negative_ratio: float = 1.0
    model: str = "n"
    epochs: int = 20
    batch: int = 16
    imgsz: int = 128
    steps_per_epoch: int = 45
    val_every: int = 5
    threads: int = 2
    lr: float = 3e-3
    small_boost: float = 0.0  # images with a box under 12 px drawn (1 + boost)x as often
    copy_paste: float = 0.0  # probability of pasting banked lesions into a crop (data/mix.py)
    score_floor: float = 0.0  # least class target of a box's best anchor (models/assigner.py)
    rescorer_studies: int = 0  # > 0: fit a candidate rescorer on this many phantoms (pipeline/rescore.py)
    rescorer_seed0: int = 500_000  # its seeds: never used to train the detector nor to test
    fpr_studies: int = 0  # > 0: train the 3D patch classifier on this many training phantoms
    fpr_epochs: int = 12
    fpr_extra_studies: int = 0  # > 0: also the true nodules of this many nodule-rich phantoms (FPR_EXTRA)
    fpr_detail: bool = False  # also train the detail classifier for small candidates (FPR_DETAIL)
    second_test_studies: int = 0  # > 0: also evaluate on a second held-out set (seeds second_test_seed0…)
    second_test_seed0: int = 920_000
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _phantom_config(spacings: tuple[float, ...]):  # type: ignore[no-untyped-def]
    from lesionlens.synth.ct import CTPhantomConfig

    return CTPhantomConfig(slice_spacings_mm=spacings)


def _cache_phantom(seed: int, spacings: tuple[float, ...], cache: Path) -> Path:
    """Generate (once) and cache hu/labels/truth of one phantom; returns its folder."""
    from lesionlens.synth.ct import generate_ct

    d = cache / f"seed{seed}"
    if (d / "truth.json").is_file():
        return d
    ph = generate_ct(seed, _phantom_config(spacings))
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "hu.npy", ph.hu)
    np.save(d / "labels.npy", ph.labels)
    np.save(d / "affine.npy", ph.affine)
    (d / "truth.json").write_text(json.dumps(ph.truth_document()))
    return d


def _load_cached(d: Path):  # type: ignore[no-untyped-def]
    from lesionlens.data.trainset import CTCase
    from lesionlens.dicom.types import Volume
    from lesionlens.synth.truth import load_truth

    truth = load_truth(d / "truth.json")
    hu = np.load(d / "hu.npy").astype(np.float32)
    vol = Volume(pixels=hu, affine=np.load(d / "affine.npy"), modality="CT",
                 study_instance_uid=truth.study_instance_uid, series_instance_uid=truth.series_instance_uid,
                 is_volumetric=True, has_patient_geometry=True, metadata={"patient_id": truth.patient_id})
    return CTCase(vol, truth, np.load(d / "labels.npy"), patient_id=truth.patient_id, source=str(d))


def _lazy(d: Path):  # type: ignore[no-untyped-def]
    from lesionlens.data.trainset import LazyCTCase
    from lesionlens.synth.truth import load_truth

    t = load_truth(d / "truth.json")
    return LazyCTCase(t, t.patient_id, str(d), partial(_load_cached, d))


def detector_train_config(recipe: DefaultRecipe, data: Path, out: Path, device: str = "auto") -> TrainConfig:
    """The detector's :class:`TrainConfig` for one stage of the recipe (no early stop: patience = epochs)."""
    from lesionlens.engine.config import TrainConfig

    return TrainConfig(data=str(data), model=recipe.model, epochs=recipe.epochs, batch=recipe.batch,
                       imgsz=recipe.imgsz, steps_per_epoch=recipe.steps_per_epoch, lr=recipe.lr,
                       seed=recipe.seed, device=device, out=str(out), patience=recipe.epochs,
                       val_every=recipe.val_every, threads=recipe.threads, small_boost=recipe.small_boost,
                       copy_paste=recipe.copy_paste, score_floor=recipe.score_floor)


def run_default(recipe: DefaultRecipe, work: Path, *, device: str = "auto", install_to: Path | None = None,
                log: Any = print, shared: Path | None = None) -> dict[str, Any]:
    """Run one stage of the default recipe under ``work``; returns a summary (also written as JSON).

    shared: folder holding the phantom cache and the held-out test studies, so that stages
    reuse them (default: ``work`` itself).
    """
    from lesionlens.data.trainset import TrainSetConfig, build_training_set
    from lesionlens.engine.evaluate import evaluate_ct
    from lesionlens.engine.export import export_onnx
    from lesionlens.engine.predict import Predictor, froc_config
    from lesionlens.engine.trainer import Trainer, load_package_model
    from lesionlens.synth.ct import generate_ct, write_ct_study

    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    shared = shared or work
    cache = shared / "phantoms"
    n_tv = recipe.train_studies + recipe.val_studies
    dirs = []
    for i in range(n_tv):
        dirs.append(_cache_phantom(recipe.train_seed0 + i, recipe.slice_spacings_mm, cache))
        log(f"phantom {i + 1}/{n_tv}")
    times["generate_train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    val_frac = recipe.val_studies / n_tv
    ts_cfg = TrainSetConfig(context_mm=recipe.context_mm, ratios=(1 - val_frac, val_frac, 0.0),
                            negative_ratio=recipe.negative_ratio, seed=recipe.seed)
    dataset_dir = work / "dataset"
    _, summary = build_training_set([_lazy(d) for d in dirs], dataset_dir, ts_cfg)
    times["build_dataset"] = time.perf_counter() - t0
    log(f"training set: {summary.positives} positives, {summary.negatives} negatives")

    t0 = time.perf_counter()
    cfg = detector_train_config(recipe, dataset_dir / "dataset.yaml", work / "run", device)
    res = Trainer(cfg, on_epoch_end=[lambda e, r: log(f"epoch {e}: loss {r.get('train_loss'):.3f} "
                                                      f"val AP50 {r.get('val_ap50')}")]).fit()
    times["train"] = time.perf_counter() - t0
    pkg = res.best
    net, _ = load_package_model(pkg)
    export_onnx(net, pkg / "model.onnx", imgsz=512, dynamic=True)
    if recipe.rescorer_studies:
        t0 = time.perf_counter()
        fit_default_rescorer(pkg, recipe, cache, log=log)
        times["fit_rescorer"] = time.perf_counter() - t0
    if recipe.fpr_studies:
        t0 = time.perf_counter()
        fit_default_patch_classifier(pkg, recipe, cache, log=log)
        times["fit_patch_classifier"] = time.perf_counter() - t0
    if recipe.fpr_detail:
        t0 = time.perf_counter()
        fit_default_detail_classifier(pkg, recipe, cache, log=log)
        times["fit_detail_classifier"] = time.perf_counter() - t0

    pred = Predictor(pkg, backend="onnx", threads=2, config=froc_config(pkg))
    results: list[dict[str, Any]] = []
    sets = [("test", recipe.test_seed0, recipe.test_studies, "eval")]
    if recipe.second_test_studies:
        sets.append(("test2", recipe.second_test_seed0, recipe.second_test_studies, "eval2"))
    for folder, seed0, n, eval_name in sets:
        t0 = time.perf_counter()
        test_dir = shared / folder
        for i in range(n):
            d = test_dir / f"seed{seed0 + i}"
            if not (d / "truth.json").is_file():
                write_ct_study(generate_ct(seed0 + i, _phantom_config(recipe.test_slice_spacings_mm)), d)
            log(f"{folder} study {i + 1}/{n}")
        times[f"generate_{folder}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        results.append(evaluate_ct(pred, test_dir, work / eval_name).metrics)
        times[f"evaluate_{folder}"] = time.perf_counter() - t0
        log(f"held-out CPM ({folder}, seeds {seed0}…): {results[-1]['cpm']}")
    m = results[0]

    finalize_package(pkg, recipe, results, res.images_per_s, summary.to_dict())
    out = {"recipe": asdict(recipe), "times_s": times, "cpm": m["cpm"], "package": str(pkg),
           "train_images_per_s": res.images_per_s}
    (work / "recipe_summary.json").write_text(json.dumps(out, indent=2, default=str))
    if install_to is not None:
        install_package(pkg, install_to)
        out["installed"] = str(install_to)
    return out


# 0.3.0: 3D patch classifier; 0.4.0: retrained with more positives, weighted combination;
# 0.4.1: 0.4.0's weights re-exported (concatenated CSP fuse, clamped decode: a faster graph);
# 0.4.2: 0.4.1 plus the detail classifier for small candidates (fpr_detail.onnx)
MODEL_NAME, MODEL_VERSION = "lesionlens-ct-nodule-n", "0.4.2"


def finalize_package(pkg: Path, recipe: DefaultRecipe, results: list[dict[str, Any]], images_per_s: float,
                     data: dict[str, Any]) -> None:
    """Write the model card and the name, version, notice and held-out metrics into ``pkg``.

    results: ``metrics.json`` of the held-out set, then of the second held-out set if any."""
    from lesionlens.engine.checkpoint import read_meta, write_meta

    m = results[0]
    second = results[1] if len(results) > 1 else None
    (pkg / "MODEL_CARD.md").write_text(model_card(recipe, m, images_per_s, data, second=second))
    meta = read_meta(pkg)
    meta.name, meta.version, meta.notice = MODEL_NAME, MODEL_VERSION, NOTICE
    meta.metrics = {"held_out": {k: m[k] for k in ("cpm", "cpm_ci", "n_scans")},
                    "froc": m["froc"]["sensitivity_at_fps"], "recall_by_size_at_4fp": m["recall_by_size_at_4fp"],
                    "operating_point": m["operating_point"]}
    if second is not None:
        meta.metrics["held_out_2"] = {**{k: second[k] for k in ("cpm", "cpm_ci", "n_scans")},
                                      "seeds": [recipe.second_test_seed0,
                                                recipe.second_test_seed0 + recipe.second_test_studies - 1],
                                      "froc": second["froc"]["sensitivity_at_fps"],
                                      "recall_by_size_at_4fp": second["recall_by_size_at_4fp"]}
    write_meta(pkg, meta)


#: chosen by 5-fold cross-validation over the phantoms (docs/detection.md, "Candidate rescoring")
RESCORER_FIT = {"hidden": 32, "epochs": 500, "weight_decay": 1e-3, "pos_weight": 1.0, "box_conf": 0.01}


@dataclass
class RescorerCase:
    """One phantom's detector candidates as rescorer data: ``x`` features, ``y`` LUNA16 hit labels
    and ``keep`` (False for candidates that hit only an excluded finding), all ``(N, ...)``."""

    truth: Any
    candidates: list[Any]
    x: np.ndarray
    y: np.ndarray
    keep: np.ndarray


def phantom_candidates(predictor: Any, seeds: Iterable[int], spacings: tuple[float, ...],
                       cache: Path) -> Iterator[tuple[Any, list[Any]]]:
    """``(case, candidates)`` for each cached phantom of ``seeds`` (generated once into ``cache``):
    the loaded CTCase and ``predictor``'s 3D candidates on its volume."""
    for sd in seeds:
        case = _load_cached(_cache_phantom(sd, spacings, cache))
        yield case, predictor.predict_volume(case.volume).candidates


def rescorer_cases(predictor: Any, seed0: int, n: int, spacings: tuple[float, ...], cache: Path, *,
                   log: Any = print) -> list[RescorerCase]:
    """Run ``predictor`` (built with ``rescore=False``) over ``n`` cached phantoms from ``seed0``
    and label its candidates: the data :func:`fit_default_rescorer` fits on and
    ``bench/bench_rescorer.py`` cross-validates on."""
    from lesionlens.pipeline.rescore import candidate_features, label_candidates

    out = []
    for i, (case, cands) in enumerate(phantom_candidates(predictor, range(seed0, seed0 + n), spacings, cache)):
        y, keep = label_candidates(cands, case.truth)
        x = candidate_features(cands, case.volume.pixels, float(case.volume.spacing_mm[0]))
        out.append(RescorerCase(case.truth, cands, x, y, keep))
        log(f"rescorer phantom {i + 1}/{n}: {len(cands)} candidates, {int(y.sum())} hits")
    return out


def fit_default_rescorer(pkg: Path, recipe: DefaultRecipe, cache: Path, *, log: Any = print) -> dict[str, Any]:
    """Fit the candidate rescorer of ``pkg`` on ``recipe.rescorer_studies`` phantoms from
    ``recipe.rescorer_seed0`` (a seed range used neither for training nor for testing): the
    detector runs over each phantom at box threshold 0.01, its candidates are labelled by the
    LUNA16 hit rule and the perceptron is fitted on all of them. Writes ``pkg/rescorer.json``."""
    from lesionlens.engine.predict import PredictConfig, Predictor
    from lesionlens.pipeline.rescore import fit_rescorer

    box_conf = float(RESCORER_FIT["box_conf"])
    pred = Predictor(pkg, backend="onnx", threads=recipe.threads or None,
                     config=PredictConfig(conf=box_conf, max_det=300, rescore=False))
    cases = rescorer_cases(pred, recipe.rescorer_seed0, recipe.rescorer_studies, recipe.test_slice_spacings_mm,
                           cache, log=log)
    x = np.concatenate([c.x[c.keep] for c in cases])
    y = np.concatenate([c.y[c.keep] for c in cases])
    seeds = [recipe.rescorer_seed0, recipe.rescorer_seed0 + recipe.rescorer_studies - 1]
    if not 0 < int(y.sum()) < len(y):
        # a detector that hits no nodule (or nothing else) gives nothing to learn: keep it unrescored
        log(f"rescorer not fitted: the detector's {len(y)} candidates on {recipe.rescorer_studies} phantoms "
            f"include {int(y.sum())} hits; it needs hits and misses (train longer?)")
        return {"skipped": True, "n_candidates": int(len(y)), "n_positive": int(y.sum()), "seeds": seeds}
    r = fit_rescorer(x, y, hidden=int(RESCORER_FIT["hidden"]), epochs=int(RESCORER_FIT["epochs"]),
                     weight_decay=float(RESCORER_FIT["weight_decay"]), pos_weight=float(RESCORER_FIT["pos_weight"]),
                     box_conf=box_conf, info={"seeds": seeds, "phantoms": recipe.rescorer_studies})
    r.save(pkg)
    return r.info


#: patches mined per phantom: the detector's most confident false candidates and a random sample
#: of the rest; every true nodule also gives this many jittered cubes
FPR_MINING = {"box_conf": 0.01, "top_negatives": 300, "random_negatives": 200, "truth_copies": 4,
              "neg_per_pos": 3}
#: more positives for the patch classifier, cheaply (no detector run): the true nodules of phantoms
#: drawn with many nodules each, from a seed range of their own (never used to train the detector,
#: tune or test)
FPR_EXTRA: dict[str, Any] = {"seed0": 700_000, "n_nodules": (12, 16)}
#: the detector's weight w in the candidate confidence s^w · p^(1 − w) (pipeline/patchnet.py),
#: chosen on the validation phantoms 500000… with bench/bench_patchnet.py (never on the test sets)
FPR_DETECTOR_WEIGHT = 0.25


def _extra_card(recipe: DefaultRecipe) -> str:
    if not recipe.fpr_extra_studies:
        return ""
    seed0, (lo, hi) = int(FPR_EXTRA["seed0"]), FPR_EXTRA["n_nodules"]
    return (f", plus the true nodules of {recipe.fpr_extra_studies} phantoms drawn with {lo}–{hi} nodules each "
            f"(seeds {seed0}…{seed0 + recipe.fpr_extra_studies - 1}, used for nothing else)")


def _jittered(lesions: list[Any], copies: int, rng: np.random.Generator) -> np.ndarray:
    """``(N, 3)`` LPS mm: ``copies`` jittered centres of each lesion, each moved by up to a quarter of
    its diameter (at most 2 mm) along each axis."""
    pts = [np.asarray(les.center_mm, np.float64) + rng.uniform(-1, 1, 3) * min(les.diameter_mm / 4, 2.0)
           for les in lesions for _ in range(copies)]
    return np.array(pts, np.float64).reshape(-1, 3)


def _jittered_truth(truth: Any, rng: np.random.Generator) -> np.ndarray:
    """:func:`_jittered` centres (``FPR_MINING["truth_copies"]`` each) of every (not excluded) true nodule."""
    return _jittered([les for les in truth.lesions if not les.excluded], int(FPR_MINING["truth_copies"]), rng)


def _nodule_rich_cubes(seeds: Iterable[int], spacings: tuple[float, ...], folder: Path,
                       points: Callable[[Any, np.random.Generator], np.ndarray], size: int, step_mm: float, *,
                       what: str, log: Any) -> np.ndarray:
    """int16 HU cubes (``size``³ sampled every ``step_mm``) around ``points(truth, rng)`` of each
    nodule-rich phantom of ``seeds`` (``FPR_EXTRA``; ``rng`` seeded with the phantom's seed). The
    phantoms are not kept, only their cubes (``folder/seed*.npy``), so a rerun reuses them."""
    from dataclasses import replace

    from lesionlens.pipeline.patchnet import extract_patches
    from lesionlens.synth.ct import generate_ct

    folder.mkdir(parents=True, exist_ok=True)
    config = replace(_phantom_config(spacings), n_nodules=tuple(FPR_EXTRA["n_nodules"]), p_no_nodules=0.0)
    out = []
    seeds = list(seeds)
    for i, sd in enumerate(seeds):
        f = folder / f"seed{sd}.npy"
        if not f.is_file():
            ph = generate_ct(sd, config)
            pts = points(ph.truth, np.random.default_rng(sd))
            cubes = extract_patches(ph.hu.astype(np.float32), ph.affine, pts, size=size, step_mm=step_mm)
            tmp = folder / f"seed{sd}.{os.getpid()}.tmp.npy"
            np.save(tmp, cubes.astype(np.int16))
            tmp.replace(f)
        out.append(np.load(f))
        log(f"{what}nodule-rich phantom {i + 1}/{len(seeds)}: {len(out[-1])} positive cubes")
    return np.concatenate(out) if out else np.zeros((0, size, size, size), np.int16)


def truth_patches(seeds: Iterable[int], spacings: tuple[float, ...], cache: Path, *,
                  log: Any = print) -> np.ndarray:
    """int16 HU cubes around the jittered true nodules (:func:`_jittered_truth`) of the nodule-rich
    phantoms ``seeds`` (``FPR_EXTRA``), cached in ``cache/truth-cubes``."""
    from lesionlens.pipeline.patchnet import SIZE, STEP_MM

    return _nodule_rich_cubes(seeds, spacings, cache / "truth-cubes", _jittered_truth, SIZE, STEP_MM, what="",
                              log=log)


def mine_patches(case: Any, cands: list[Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(pos, neg)`` int16 HU cubes of one phantom ``case`` (a cached CTCase) and the detector's
    candidates on it, labelled by the LUNA16 hit rule (those hitting only an excluded finding are
    dropped): positives are the hits and jittered copies of every true nodule; negatives the
    most confident false candidates and a random sample of the rest (``FPR_MINING``)."""
    from lesionlens.pipeline.patchnet import extract_patches
    from lesionlens.pipeline.rescore import label_candidates

    vol = case.volume
    y, keep = label_candidates(cands, case.truth)
    s = np.array([c.confidence for c in cands], np.float64)
    false = np.flatnonzero((y == 0) & keep)
    top = false[np.argsort(-s[false], kind="stable")][: int(FPR_MINING["top_negatives"])]
    rest = np.setdiff1d(false, top)
    pick = np.r_[top, rng.choice(rest, min(int(FPR_MINING["random_negatives"]), len(rest)), replace=False)].astype(int)
    centers = np.array([c.center_mm for c in cands], np.float64).reshape(-1, 3)
    pc = np.concatenate([centers[y > 0], _jittered_truth(case.truth, rng)])
    return (extract_patches(vol.pixels, vol.affine, pc).astype(np.int16),
            extract_patches(vol.pixels, vol.affine, centers[pick]).astype(np.int16))


def patch_training_data(predictor: Any, seeds: list[int], spacings: tuple[float, ...], cache: Path, *,
                        seed: int = 0, log: Any = print) -> tuple[np.ndarray, np.ndarray]:
    """``(pos, neg)`` cubes (:func:`mine_patches`) from the cached phantoms ``seeds``, whose
    candidates ``predictor`` (built with ``rescore=False``) proposes."""
    rng = np.random.default_rng(seed)
    pos, neg = [], []
    for i, (case, cands) in enumerate(phantom_candidates(predictor, seeds, spacings, cache)):
        p, n = mine_patches(case, cands, rng)
        pos.append(p)
        neg.append(n)
        log(f"patch phantom {i + 1}/{len(seeds)}: {len(p)} positive and {len(n)} negative cubes")
    return np.concatenate(pos), np.concatenate(neg)


def fit_default_patch_classifier(pkg: Path, recipe: DefaultRecipe, cache: Path, *,
                                 log: Any = print) -> dict[str, Any]:
    """Train the 3D patch classifier of ``pkg`` on the detector's candidates over the first
    ``recipe.fpr_studies`` training phantoms and write ``pkg/fpr.onnx``."""
    from lesionlens.engine.predict import PredictConfig, Predictor
    from lesionlens.pipeline.patchnet import (
        PATCH_FILE,
        PatchFitConfig,
        export_patch_classifier,
        fit_patch_classifier,
    )

    box_conf = float(FPR_MINING["box_conf"])
    pred = Predictor(pkg, backend="onnx", threads=recipe.threads or None,
                     config=PredictConfig(conf=box_conf, max_det=300, rescore=False))
    seeds = [recipe.train_seed0 + i for i in range(recipe.fpr_studies)]
    pos, neg = patch_training_data(pred, seeds, recipe.slice_spacings_mm, cache, seed=recipe.seed, log=log)
    info = {"box_conf": box_conf, "seeds": [seeds[0], seeds[-1]], "n_positive": int(len(pos)),
            "n_negative": int(len(neg)), "epochs": recipe.fpr_epochs, "detector_weight": FPR_DETECTOR_WEIGHT,
            **FPR_MINING}
    if recipe.fpr_extra_studies:
        seed0 = int(FPR_EXTRA["seed0"])
        extra = truth_patches(range(seed0, seed0 + recipe.fpr_extra_studies), recipe.slice_spacings_mm, cache,
                              log=log)
        pos = np.concatenate([pos, extra]) if len(pos) else extra
        info.update({"n_positive": int(len(pos)), "n_extra_positive": int(len(extra)),
                     "extra_seeds": [seed0, seed0 + recipe.fpr_extra_studies - 1],
                     "extra_nodules_per_phantom": list(FPR_EXTRA["n_nodules"])})
    if len(pos) == 0 or len(neg) == 0:
        log(f"patch classifier not trained: {len(pos)} positive and {len(neg)} negative cubes")
        return {"skipped": True, **info}
    net = fit_patch_classifier(pos, neg, PatchFitConfig(epochs=recipe.fpr_epochs, seed=recipe.seed,
                                                         neg_per_pos=int(FPR_MINING["neg_per_pos"]),
                                                         threads=recipe.threads or None), log=log)
    export_patch_classifier(net, pkg / PATCH_FILE, info)
    return info


#: the detail classifier (pipeline/patchnet.py, ``fpr_detail.onnx``): the same network on a 12 mm
#: cube at 0.5 mm, trained on small nodules only, for candidates up to ``gate_mm`` across. Positives:
#: the hits on nodules up to ``max_nodule_mm`` and ``truth_copies`` jittered cubes of each such
#: nodule of the training phantoms and of ``extra_studies`` nodule-rich phantoms (FPR_EXTRA's
#: seeds); negatives: the false candidates up to ``max_candidate_mm`` that the main classifier's
#: mining picks (FPR_MINING). ``gate_mm`` and ``main_weight`` chosen on the validation phantoms
#: 500000… with bench/bench_patchnet.py (never on the test sets).
FPR_DETAIL = {"size": 24, "step_mm": 0.5, "max_nodule_mm": 6.5, "max_candidate_mm": 10.0, "truth_copies": 8,
              "extra_studies": 100, "epochs": 8, "neg_per_pos": 3, "gate_mm": 7.0, "main_weight": 0.1}


def _small_jittered(lesions: list[Any], rng: np.random.Generator) -> np.ndarray:
    """:func:`_jittered` centres (``FPR_DETAIL["truth_copies"]`` each) of ``lesions``."""
    return _jittered(lesions, int(FPR_DETAIL["truth_copies"]), rng)


def _small(truth: Any) -> list[Any]:
    return [les for les in truth.lesions if not les.excluded and les.diameter_mm <= FPR_DETAIL["max_nodule_mm"]]


def detail_truth_patches(seeds: Iterable[int], spacings: tuple[float, ...], cache: Path, *,
                         log: Any = print) -> np.ndarray:
    """int16 detail cubes around jittered small true nodules of the nodule-rich phantoms ``seeds``
    (FPR_EXTRA's configuration), cached per seed in ``cache/detail-cubes``."""
    return _nodule_rich_cubes(seeds, spacings, cache / "detail-cubes",
                              lambda truth, rng: _small_jittered(_small(truth), rng), int(FPR_DETAIL["size"]),
                              float(FPR_DETAIL["step_mm"]), what="detail cubes, ", log=log)


def mine_detail_patches(case: Any, cands: list[Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(pos, neg)`` int16 detail cubes of one phantom and the detector's candidates on it: the
    hits on small nodules and jittered copies of those nodules; the false candidates that
    :func:`mine_patches` would pick, up to ``max_candidate_mm`` across."""
    from lesionlens.pipeline.patchnet import extract_patches
    from lesionlens.pipeline.rescore import label_candidates

    size, step = int(FPR_DETAIL["size"]), float(FPR_DETAIL["step_mm"])
    vol = case.volume
    y, keep = label_candidates(cands, case.truth)
    s = np.array([c.confidence for c in cands], np.float64)
    diam = np.array([c.diameter_mm for c in cands], np.float64)
    centers = np.array([c.center_mm for c in cands], np.float64).reshape(-1, 3)
    false = np.flatnonzero((y == 0) & keep)
    top = false[np.argsort(-s[false], kind="stable")][: int(FPR_MINING["top_negatives"])]
    rest = np.setdiff1d(false, top)
    pick = np.r_[top, rng.choice(rest, min(int(FPR_MINING["random_negatives"]), len(rest)), replace=False)].astype(int)
    pick = pick[diam[pick] <= FPR_DETAIL["max_candidate_mm"]]
    small = _small(case.truth)
    hits = np.zeros(len(cands), bool)
    for les in small:
        hits |= np.sum((centers - np.asarray(les.center_mm)) ** 2, axis=1) < (les.diameter_mm / 2) ** 2
    pc = np.concatenate([centers[hits], _small_jittered(small, rng)])
    return (extract_patches(vol.pixels, vol.affine, pc, size=size, step_mm=step).astype(np.int16),
            extract_patches(vol.pixels, vol.affine, centers[pick], size=size, step_mm=step).astype(np.int16))


def fit_default_detail_classifier(pkg: Path, recipe: DefaultRecipe, cache: Path, *,
                                  log: Any = print) -> dict[str, Any]:
    """Train the detail classifier of ``pkg`` (FPR_DETAIL) on the detector's candidates over the
    first ``recipe.fpr_studies`` training phantoms and write ``pkg/fpr_detail.onnx``."""
    from lesionlens.engine.predict import PredictConfig, Predictor
    from lesionlens.pipeline.patchnet import (
        DETAIL_FILE,
        PatchFitConfig,
        export_patch_classifier,
        fit_patch_classifier,
    )

    box_conf = float(FPR_MINING["box_conf"])
    pred = Predictor(pkg, backend="onnx", threads=recipe.threads or None,
                     config=PredictConfig(conf=box_conf, max_det=300, rescore=False))
    seeds = [recipe.train_seed0 + i for i in range(recipe.fpr_studies)]
    rng = np.random.default_rng(recipe.seed)
    pos, neg = [], []
    for i, (case, cands) in enumerate(phantom_candidates(pred, seeds, recipe.slice_spacings_mm, cache)):
        p, n = mine_detail_patches(case, cands, rng)
        pos.append(p)
        neg.append(n)
        log(f"detail phantom {i + 1}/{len(seeds)}: {len(p)} positive and {len(n)} negative cubes")
    seed0, n_extra = int(FPR_EXTRA["seed0"]), int(FPR_DETAIL["extra_studies"])
    pos.append(detail_truth_patches(range(seed0, seed0 + n_extra), recipe.slice_spacings_mm, cache, log=log))
    pos_a, neg_a = np.concatenate(pos), np.concatenate(neg)
    info = {"box_conf": box_conf, "seeds": [seeds[0], seeds[-1]], "extra_seeds": [seed0, seed0 + n_extra - 1],
            "n_positive": int(len(pos_a)), "n_negative": int(len(neg_a)), "role": "detail", **FPR_DETAIL}
    if len(pos_a) == 0 or len(neg_a) == 0:
        log(f"detail classifier not trained: {len(pos_a)} positive and {len(neg_a)} negative cubes")
        return {"skipped": True, **info}
    net = fit_patch_classifier(pos_a, neg_a, PatchFitConfig(epochs=int(FPR_DETAIL["epochs"]), seed=recipe.seed,
                                                             neg_per_pos=int(FPR_DETAIL["neg_per_pos"]),
                                                             threads=recipe.threads or None), log=log)
    export_patch_classifier(net, pkg / DETAIL_FILE, info, size=int(FPR_DETAIL["size"]),
                            step_mm=float(FPR_DETAIL["step_mm"]))
    return info


def install_package(pkg: Path, dest: Path) -> None:
    """Copy the files a package needs for prediction (no optimizer state) to ``dest``; a stage file
    that ``dest`` holds from an earlier model but ``pkg`` lacks (e.g. an old ``rescorer.json``) is
    removed, so the installed model is exactly ``pkg``."""
    from lesionlens.engine.checkpoint import CONFIG, META, PREDICTION_FILES

    dest.mkdir(parents=True, exist_ok=True)
    for name in (*PREDICTION_FILES, CONFIG, META, "MODEL_CARD.md"):
        if (pkg / name).is_file():
            shutil.copy2(pkg / name, dest / name)
        else:
            (dest / name).unlink(missing_ok=True)


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "n/a"


def _froc_rows(m: dict[str, Any]) -> str:
    ops = m["froc"]["sensitivity_at_fps"]
    return "\n".join(f"| {fp} | {s:.3f} |" if s is not None else f"| {fp} | - |" for fp, s in ops.items())


def _size_rows(m: dict[str, Any]) -> str:
    return "\n".join(
        f"| {b['name']} | {b['n_total']} | {b['recall']:.3f} |" if b["recall"] is not None
        else f"| {b['name']} | 0 | - |" for b in m["recall_by_size_at_4fp"])


def model_card(recipe: DefaultRecipe, m: dict[str, Any], images_per_s: float, data: dict[str, Any],
               second: dict[str, Any] | None = None) -> str:
    rows, size_rows = _froc_rows(m), _size_rows(m)
    ci = m.get("cpm_ci") or [None, None]
    extra = ""
    if second is not None:
        ci2 = second.get("cpm_ci") or [None, None]
        extra = f"""
A second held-out set, {second['n_scans']} scans from seeds {recipe.second_test_seed0}…, was made after the
first had been used to choose between training stages and to study the false positives; it has
not been used for any choice:

| FP/scan | sensitivity |
|---|---|
{_froc_rows(second)}

**CPM {_fmt(second['cpm'])}** (95 % bootstrap CI {_fmt(ci2[0])} – {_fmt(ci2[1])}).

| size | nodules | recall at 4 FP/scan |
|---|---|---|
{_size_rows(second)}
"""
    warm = "" if recipe.model in ("n", "s", "m") else (
        f" (stage {len(DEFAULT_STAGES)} of the recipe, warm-started from the previous stage's best weights; "
        "see `DEFAULT_STAGES` in `lesionlens/engine/recipes.py`)")
    boost = (f"; images holding a box under 12 px drawn {1 + recipe.small_boost:g}× as often"
             if recipe.small_boost else "")
    if recipe.copy_paste:
        boost += f"; lesions copy-pasted into {recipe.copy_paste:.0%} of the crops"
    if recipe.score_floor:
        boost += (f"; each box's best-aligned anchor given a class target of at least {recipe.score_floor:g} "
                  "(score floor: tiny boxes otherwise learn scores as low as their IoU)")
    rescorer = "" if not recipe.rescorer_studies else (
        "\nThe 3D candidates are then rescored by a small perceptron (`lesionlens/pipeline/rescore.py`, "
        "`rescorer.json`: track shape and HU features) fitted on the candidates the detector produced on "
        f"{recipe.rescorer_studies} further phantoms (seeds {recipe.rescorer_seed0}…"
        f"{recipe.rescorer_seed0 + recipe.rescorer_studies - 1}), used neither for training nor for testing; "
        "its confidence is the estimated probability that a candidate is a nodule (on these phantoms).")
    if recipe.fpr_studies:
        rescorer += (
            "\nEach 3D candidate is then checked by a 3D patch classifier (`lesionlens/pipeline/patchnet.py`, "
            "`fpr.onnx`: a small 3D CNN on a 24 mm cube of HU sampled at 1 mm around it), trained on the "
            f"detector's candidates over {recipe.fpr_studies} of its training phantoms (seeds "
            f"{recipe.train_seed0}…{recipe.train_seed0 + recipe.fpr_studies - 1}) and on their true nodules"
            f"{_extra_card(recipe)}; a candidate's confidence is s^w · p^(1 − w) of the detector's score s and the "
            f"classifier's probability p (w = {FPR_DETECTOR_WEIGHT}; p averaged over 8 views of the cube for the "
            "64 highest-ranked candidates; one view for the rest).")
    if recipe.fpr_detail:
        d = FPR_DETAIL
        rescorer += (
            f" Candidates up to {d['gate_mm']:g} mm across are also scored by a detail classifier (`fpr_detail.onnx`: "
            f"the same network on a {d['size'] * d['step_mm']:g} mm cube sampled at {d['step_mm']:g} mm), trained "
            f"on nodules up to {d['max_nodule_mm']:g} mm only (the detector's hits and jittered true nodules of the "
            f"same training phantoms and of {d['extra_studies']} nodule-rich phantoms) against the false "
            f"candidates up to {d['max_candidate_mm']:g} mm; their p becomes p^a · q^(1 − a) with the detail "
            f"classifier's probability q (a = {d['main_weight']:g}).")
    return f"""# Model card — lesionlens-ct-nodule-n (default)

**{NOTICE}**

## Intended use
Demonstration of the LesionLens pipeline (ingest → detection → findings) and a starting point for
fine-tuning on a hospital's own annotated data. It must not be used to inform any clinical decision.

## Model
One-stage anchor-free detector, size `n`{warm}, input 3 channels = HU slices at
{list(recipe.context_mm)} mm around the slice (lung window −600/1600), output strides 4/8/16,
per-slice boxes merged into 3D candidates.{rescorer}

## Training data
{recipe.train_studies} training + {recipe.val_studies} validation synthetic chest CT phantoms
(seeds {recipe.train_seed0}…{recipe.train_seed0 + recipe.train_studies + recipe.val_studies - 1}),
slice spacing {list(recipe.slice_spacings_mm)} mm; nodules 3–30 mm (most 3–10), solid / part-solid /
ground-glass, juxtapleural and juxtavascular. Training set: {json.dumps(data.get('positives'))} positive and
{json.dumps(data.get('negatives'))} negative slices per split. Recipe: {recipe.epochs} epochs ×
{recipe.steps_per_epoch} steps, batch {recipe.batch}, crops {recipe.imgsz} px, lr {recipe.lr}{boost};
training throughput {images_per_s:.1f} images/s on the machine that trained it.

## Held-out evaluation
{m['n_scans']} synthetic scans from seeds {recipe.test_seed0}… never used in training (but used to choose
between training stages), read through the full DICOM ingest path. FROC (LUNA16 rules):

| FP/scan | sensitivity |
|---|---|
{rows}

**CPM {_fmt(m['cpm'])}** (95 % bootstrap CI {_fmt(ci[0])} – {_fmt(ci[1])}).

Recall by nodule size at 4 FP/scan:

| size | nodules | recall |
|---|---|---|
{size_rows}
{extra}
## Limitations
Synthetic phantoms are far simpler than real CT: no motion, no contrast phases, no emphysema,
scarring, atelectasis, devices or reconstruction artefacts. Performance on real scans is unknown
and expected to be much lower. Trained only on chest CT; other modalities are out of scope.
The smallest nodules are the weak spot: on the held-out synthetic scans nodules of 3–4 mm are
missed far more often than larger ones, and small nodules more often on 2–2.5 mm slices than
on 1–1.25 mm slices (recall by size and slice thickness: docs/detection.md).
"""


#: The shipped default model: stage 1 from scratch, then stage 2 warm-started from stage 1's best
#: weights on twice the phantoms with a longer schedule, then stage 3 from stage 2 on more phantoms
#: with small lesions drawn more often, then stage 4 from stage 3 with copy-paste of lesions; the
#: last stage also trains the 3D patch classifier (false-positive reduction) and is evaluated on a
#: second held-out set.
#: ``"@previous"`` names the previous stage's best package.
DEFAULT_STAGES: tuple[DefaultRecipe, ...] = (
    DefaultRecipe(),
    DefaultRecipe(train_studies=72, val_studies=4, epochs=36, steps_per_epoch=90, val_every=6, lr=2e-3,
                  model="@previous"),
    DefaultRecipe(train_studies=100, val_studies=4, epochs=36, steps_per_epoch=120, val_every=6, lr=1.5e-3,
                  small_boost=2.0, model="@previous"),
    DefaultRecipe(train_studies=100, val_studies=4, epochs=30, steps_per_epoch=120, val_every=6, lr=1e-3,
                  small_boost=2.0, copy_paste=0.3, model="@previous", fpr_studies=104, fpr_epochs=6,
                  fpr_extra_studies=200, fpr_detail=True, second_test_studies=30),
)


def run_recipe(name: str, *, out: str | None = None, device: str | None = None, epochs: int | None = None,
               install_to: Path | None = None) -> dict[str, Any]:
    """Entry of ``lesionlens train --recipe NAME``: every stage in order under ``out``."""
    from lesionlens.cli._common import console

    if name != "default":
        raise ConfigError(f"--recipe: unknown recipe {name!r} (known: default)")
    root = Path(out or "runs/default-recipe")
    summary: dict[str, Any] = {}
    previous: Path | None = None
    for i, stage in enumerate(DEFAULT_STAGES, 1):
        recipe = DefaultRecipe(**{**asdict(stage), "epochs": epochs or stage.epochs})
        if recipe.model == "@previous":
            assert previous is not None
            recipe.model = str(previous)
        last = i == len(DEFAULT_STAGES)
        summary = run_default(recipe, root / f"stage{i}", device=device or "auto", log=console.print,
                              shared=root, install_to=install_to if last else None)
        previous = Path(summary["package"])
    console.print(json.dumps(summary, indent=2, default=str))
    return summary
