"""The leakage figures of a trained run (DESIGN.md §14, docs/leakage.md) in its metrics.json.

`record_leakage` computes them for a model in memory (end of training, `--attack_only`) when the run
lacks them under the current settings; `leakage_run` rebuilds a run from its folder (strictly,
through `trained_run`) for `python -m tools.leakage`. They go in `metrics.json` → `leakage`, with
`leakage.settings` (the key below): a run whose figures were made with other settings gets them
recomputed, as an attack's results are keyed by its settings (lifecycle/results.py).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

from lifecycle.attack_runner import finished_runs, trained_folder, write_merged
from utils import UserError, normalize

VERSION = 1
EVAL_IMAGES = "test"    # the whole test split: the train_time attack's eval images (infer_time scores a part)
REL_SE = 0.05           # Hutchinson probes are added until the standard error is under 5% of dFIL
MIN_PROBES, MAX_PROBES = 2, 64
BATCH = 256


def leakage_key(cfg: dict) -> dict:
    """What the figures of a run depend on besides the run itself: recomputed when this changes."""
    from defenses.build import cem_clusters

    return {"version": VERSION, "eval_images": EVAL_IMAGES, "rel_se": REL_SE, "min_probes": MIN_PROBES,
            "max_probes": MAX_PROBES, "clusters_per_class": cem_clusters(str(cfg["arch"])),
            "cem_kmeans": str(cfg.get("cem_kmeans") or "ours")}


def needs_leakage(metrics: dict, cfg: dict, force: bool = False) -> bool:
    rec = metrics.get("leakage")
    return force or not isinstance(rec, dict) or rec.get("settings") != leakage_key(cfg)


def compute_leakage(cfg: dict, model, bundle, defenses, device, progress: bool = True,
                    log: Callable[[str], None] = print) -> dict:
    """Both figures through the deployed encoder on the eval images (x in [0, 1]; the run's input
    normalisation is part of f); the noise itself is not part of f (its Fisher information is)."""
    import torch

    from defenses.leakage import class_cluster_groups, dfil, mixture_bound, noise_of

    t0 = time.time()
    key = leakage_key(cfg)
    noise = noise_of(defenses)
    x01 = bundle.test.x
    if noise is None:
        return {**dfil(None, x01, None), **mixture_bound(x01, None, None), "noise": None, "settings": key,
                "wall_time_s": 0.0}
    encoder = model.encoder
    was_training = encoder.training
    encoder.eval()
    try:
        def f(x):
            return encoder(normalize(x, bundle.mean, bundle.std))

        x = x01.float().div(255.0)
        gen = torch.Generator().manual_seed(int(cfg["random_seed"]))
        fisher = dfil(f, x, noise, batch_size=BATCH, rel_se=REL_SE, min_probes=MIN_PROBES, max_probes=MAX_PROBES,
                      generator=gen, progress=progress, device=device)
        with torch.no_grad():
            z = torch.cat([f(x[s:s + BATCH].to(device)).flatten(1) for s in range(0, len(x), BATCH)])
        y = bundle.test.y.to(z.device)
        groups = class_cluster_groups(z, y, bundle.num_classes, key["clusters_per_class"], int(cfg["random_seed"]),
                                      published=key["cem_kmeans"] == "published")
        mixture = mixture_bound(z, groups, noise)
    finally:
        encoder.train(was_training)
    out = {**fisher, **mixture, "noise": noise.as_dict(), "settings": key, "wall_time_s": round(time.time() - t0, 3)}
    log(f"leakage: dFIL {out['dfil']:.4g} ± {out['dfil_se']:.2g} ({out['probes']} probes/image; unbiased-attacker "
        f"MSE ≥ {out['mse_bound_unbiased']:.4g}); I(x; z) ≤ {out['mi_bound_nats']:.4g} nats/image "
        f"({out['mi_bound_bits_per_dim']:.4g} bits/dim; {out['groups']} groups, {out['images']} images) "
        f"in {out['wall_time_s']:.1f} s")
    return out


def record_leakage(cfg: dict, run_dir, model, bundle, defenses, device, metrics: dict, progress: bool = True,
                   log: Callable[[str], None] = print, force: bool = False) -> dict:
    """Compute the figures when `metrics` lacks them under the current settings and write metrics.json.

    A model the forward-mode pass cannot go through (an operation without a jvp rule) records the
    error instead of numbers: the run and its attacks are not held up by a figure beside them.
    """
    if not needs_leakage(metrics, cfg, force):
        return metrics
    try:
        metrics["leakage"] = compute_leakage(cfg, model, bundle, defenses, device, progress, log)
    except (RuntimeError, NotImplementedError) as e:
        first = (str(e).splitlines() or [""])[0][:200]
        log(f"warning: leakage figures not computed: {type(e).__name__}: {first}")
        metrics["leakage"] = {"error": f"{type(e).__name__}: {first}", "settings": leakage_key(cfg)}
    write_merged(Path(run_dir), metrics)
    return metrics


def leakage_run(run_dir, settings: Optional[dict] = None) -> str:
    """The figures of one trained run folder ('computed' or 'present'); the folder is locked meanwhile."""
    from lifecycle.trained_run import load_trained_run

    settings = settings or {}
    run_dir = Path(run_dir)
    with trained_folder(run_dir) as (run, saved, metrics):
        force = bool(settings.get("force"))
        if not needs_leakage(metrics, saved, force):
            return "present"
        tr = load_trained_run(run_dir, {k: settings.get(k) for k in ("data_root", "device")})
        record_leakage(tr.cfg, run_dir, tr.model, tr.bundle, tr.defenses, tr.device, metrics,
                       progress=bool(settings.get("progress", True)), log=run.log, force=force)
        return "computed"


def leakage_folders(paths) -> list[Path]:
    """Run folders named or below the folders named: a folder with config.json is a run itself."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise UserError(f"'{p}' is not a folder; pass run folders or a sweep folder that holds them")
        found = [p] if (p / "config.json").exists() else finished_runs(p)
        if not found:
            raise UserError(f"no finished run in or below '{p}'; train runs with main_MIA.py or run_exp.sh first")
        runs += [r for r in found if r not in runs]
    return runs
