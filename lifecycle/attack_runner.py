"""Run attacks on a trained model and record them in its run folder.

`run_attacks` is what training (`lifecycle/experiment.py`) and `--attack_only` call with a model in memory;
`attack_run(run_dir, settings)` rebuilds a run from its folder (strictly, through `trained_run`)
and attacks it: a plain function, so sweep executors can call it per run; `sweep` applies it to
every finished run below a folder. Results: `metrics.json` → `attack.<attack>.<mode>` for an attack's
first settings and view `sent` (other settings and views beside them: lifecycle/results.py), grids
`images/<attack>_<mode><tag>.png`, trained decoders/generators `attacks/<attack>_<mode><tag>.pt`,
resumable GAN checkpoints `attacks/gan_<mode><tag>.ckpt.pt` (removed once the attack finished).
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

from attacks import registry
from attacks.flags import DEFAULTS, fresh_randomness
from lifecycle.flags import attack_lists
from lifecycle.identity import attack_keys
from lifecycle.results import attack_key, file_tag, merge_recorded, missing, slot, todo
from utils import UserError, one_line, read_json, seed_everything, signals_deferred, write_json


def attack_flags() -> frozenset:
    """Flags that only change how a run is attacked (never what was trained), so `--attack_only` and
    run_gan_attack.py may override them: the parser's attack group, less its two switches."""
    return attack_keys() - {"no_attack", "attack_only"}


def make_attack(name: str, cfg: dict, mode: str, run_dir: Path, device, progress: bool, log, tag: str = "",
                start_tag: str = "", view: str = "sent"):
    """One attack for `mode` and `view`, built by its registered factory; `tag` marks its files,
    `start_tag` those of the attack it starts from. An unregistered name is a UserError, never a fallback."""
    spec = registry.spec(name)
    s = {**DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    common = dict(seed=int(cfg["random_seed"]), device=device, progress=progress, log=log,
                  queries=int(s["attack_queries"]))
    attacks = Path(run_dir) / "attacks"
    start = attacks / f"{spec.starts_from}_{mode}{start_tag}.pt" if spec.starts_from else None
    place = registry.Place(mode, view, start, attacks / f"{name}_{mode}{tag}.ckpt.pt")
    return registry.factory(name)(s, common, place)


def run_attacks(cfg: dict, run_dir: Path, model, bundle, defenses, device, metrics: dict, progress: bool = True,
                log: Callable[[str], None] = print, force: bool = False) -> dict:
    """Every attack of cfg['attacks'] × cfg['attack_modes'] × cfg['attack_view'] on `model` whose results
    under that attack's own settings `metrics` lacks (all of them with `force`); metrics.json after each.

    Results go where lifecycle/results.py says: an attack's first settings own `attack.<attack>`,
    other settings and views go beside, with their tag in file names so they never replace others'.
    """
    from attacks.aux_data import attacker_images
    from attacks.decoder import save_decoder
    from attacks.grid import save_grid

    run_dir = Path(run_dir)
    attacks, modes, views = attack_lists(cfg)
    wanted = set(todo(metrics, cfg, force))
    for mode in modes:
        fit, held, evals = attacker_images(bundle, mode, int(cfg["random_seed"]), cfg.get("attacker_data"),
                                           cfg.get("attack_eval_classes"), cfg.get("data_root"))
        for view in views:
            if int(cfg.get("attack_queries") or 1) > 1 and not fresh_randomness(cfg, view):
                raise UserError(f"--attack_queries {cfg['attack_queries']}: this run sends the same features every "
                                f"time in view {view} (no noise, local DP or dropout), so K sends show no more than "
                                "one; there is no curve to compute")
            obfuscate = defenses.deployed(view)
            for name in attacks:
                if (name, mode, view) not in wanted:
                    continue
                where = slot(metrics, name, attack_key(cfg, name), view)
                # An attack starting from another's network (the GAN from the decoder) starts from the one
                # trained with the settings of its own key, this view.
                first = registry.spec(name).starts_from
                start_tag = file_tag(metrics, first, attack_key(cfg, first), view) if first else ""
                attack = make_attack(name, cfg, mode, run_dir, device, progress, log, where.tag, start_tag, view)
                n_eval = min(len(evals), getattr(attack, "eval_limit", None) or len(evals))
                log(f"{name} attack ({mode}, view {view}): fit {len(fit)}, held-out {len(held)}, eval {n_eval}, "
                    f"{attack.label()}, {attack.epochs_done() or getattr(attack, 'epochs', '')} "
                    f"{registry.spec(name).unit}; results: metrics.json {where.where}.{mode}")
                res = attack.run(model, obfuscate, fit, held, evals, bundle.mean, bundle.std)
                grid = Path("images") / f"{name}_{mode}{where.tag}.png"
                save_grid(res.grid_originals, res.grid_recons, run_dir / grid)
                entry = {**res.summary(), "view": view, "grid": str(grid)}
                if res.model is not None:
                    saved = save_decoder(res.model, run_dir / "attacks" / f"{name}_{mode}{where.tag}.pt",
                                         mode=mode, attack=name, view=view)
                    entry["saved_model"] = str(saved.relative_to(run_dir))
                where.results[mode] = entry
                with signals_deferred():  # a checkpoint left beside its finished results would be stale
                    write_merged(run_dir, metrics)
                    ck = getattr(attack, "checkpoint_path", None)
                    if ck is not None:
                        ck.unlink(missing_ok=True)
                f, b = res.final, res.baseline_mean_image
                log(f"  {name} {mode} ({view}): MSE {f['mse_mean']:.4f}  SSIM {f['ssim_mean']:.3f}  "
                    f"PSNR {f['psnr_mean']:.2f} dB (mean-image guess: MSE {b['mse_mean']:.4f} "
                    f"PSNR {b['psnr_mean']:.2f} dB)  {res.wall_time_s:.0f} s  grid: {run_dir / grid}")
    metrics["status"] = "finished"
    write_merged(run_dir, metrics)
    return metrics


def write_merged(run_dir: Path, metrics: dict) -> None:
    """Write metrics.json keeping attack results that another process (say run_gan_attack.py while
    main_MIA.py --attack_only runs) recorded since this one read the file: results are never lost."""
    path = run_dir / "metrics.json"
    try:
        disk = read_json(path) if path.exists() else {}
    except ValueError:
        disk = {}
    if isinstance(disk, dict):
        merge_recorded(metrics, disk)
    write_json(path, metrics)


def attack_run(run_dir, settings: dict) -> dict:
    """Attack one trained run folder with `settings` (attack flags plus data_root / device / progress,
    and `force` to redo results that exist).

    The model, cut, bottleneck and defences come from the folder's config.json and best checkpoint,
    loaded strictly. The folder is locked meanwhile; results for attack settings other than the run's
    own go beside its results (lifecycle/results.py), never over them. Returns the updated metrics.json
    content.
    """
    from lifecycle.trained_run import load_trained_run

    run_dir = Path(run_dir)
    overrides = {k: settings.get(k) for k in (*attack_flags(), "data_root", "device")}
    with trained_folder(run_dir) as (run, saved, metrics):
        merged = {**saved, **{k: v for k, v in overrides.items() if v is not None}}
        force = bool(settings.get("force"))
        if not todo(metrics, merged, force):
            print(f"already finished: {run_dir} has these attack results (use --force to redo them)")
            return metrics
        tr = load_trained_run(run_dir, overrides)
        seed_everything(int(tr.cfg["random_seed"]))
        for n in tr.notes:
            run.log(f"note: {n}")
        return run_attacks(tr.cfg, run_dir, tr.model, tr.bundle, tr.defenses, tr.device, metrics,
                           progress=bool(settings.get("progress", True)), log=run.log, force=force)


@contextmanager
def trained_folder(run_dir: Path):
    """(the open, locked Run, its recorded config, its metrics) of a run folder whose training finished;
    a UserError otherwise. What attacking a folder and adding its leakage figures both start from."""
    from lifecycle.run_folder import Run
    from lifecycle.trained_run import read_run_config

    saved, _ = read_run_config(run_dir)
    run = Run(run_dir.parent, run_dir.name)
    run.open()
    try:
        metrics = run.metrics()
        if metrics.get("status") != "finished" or "train" not in metrics:
            raise UserError(f"{run_dir} has not finished training (status {metrics.get('status')!r}); "
                            "finish it with main_MIA.py --resume first")
        yield run, saved, metrics
    finally:
        run.close()


def finished_runs(folder) -> list[Path]:
    """Run folders below `folder` whose training finished (metrics.json says so), sorted."""
    out = []
    for path in sorted(Path(folder).rglob("metrics.json")):
        try:
            m = read_json(path)
        except (OSError, ValueError) as e:  # e.g. a bare NaN: say so rather than leave the run out unseen
            why = (str(e).splitlines() or [""])[0][:160]
            print(f"warning: skipping {one_line(path)}: unreadable ({type(e).__name__}: {one_line(why)})",
                  file=sys.stderr)
            continue
        if isinstance(m, dict) and m.get("status") == "finished" and "train" in m:
            out.append(path.parent)
    return out


def already_attacked(run_dir: Path, settings: dict) -> bool:
    """Whether the run has results for every attack, mode and view of `settings` under those settings."""
    run_dir = Path(run_dir)
    m = read_json(run_dir / "metrics.json")
    try:
        saved = read_json(run_dir / "config.json")
    except (OSError, ValueError):
        saved = {}  # attack_run will say what is wrong with the folder
    merged = {**(saved if isinstance(saved, dict) else {}),
              **{k: settings[k] for k in attack_flags() if settings.get(k) is not None}}
    attack_lists(merged)
    return isinstance(m, dict) and not missing(m, merged)


def sweep(folder, settings: dict, force: bool = False, run: Optional[Callable] = None) -> dict:
    """Attack every finished run below `folder`; runs already attacked are skipped unless `force`.
    A run that fails with a user error is reported and the others still run; the failures are then
    raised together. Returns {run_dir: 'attacked' | 'skipped'}; `run` replaces attack_run (for
    executors and tests)."""
    folder = Path(folder)
    if folder.is_file():
        raise UserError(f"sweep folder '{folder}' is a file; pass the --folder that holds the run folders")
    if not folder.is_dir():
        raise UserError(f"sweep folder '{folder}' does not exist; pass the --folder used for the runs")
    runs = finished_runs(folder)
    if not runs:
        raise UserError(f"no finished run below '{folder}'; train runs with main_MIA.py or run_exp.sh first")
    status = {}
    for i, run_dir in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {one_line(run_dir)}", flush=True)
        if not force and already_attacked(run_dir, settings):
            print(f"already attacked: {one_line(run_dir)} (use --force to attack it again)")
            status[str(run_dir)] = "skipped"
            continue
        try:
            (run or attack_run)(run_dir, settings)
        except UserError as e:  # one bad run folder must not stop the others
            print(f"failed: {one_line(run_dir)}: {one_line(e)}", flush=True)
            status[str(run_dir)] = "failed"
            continue
        status[str(run_dir)] = "attacked"
    failed = [r for r, st in status.items() if st == "failed"]
    if failed:
        raise UserError(f"{len(failed)} of {len(runs)} run(s) could not be attacked ({', '.join(failed)}); "
                        "see the 'failed:' lines above")
    return status
