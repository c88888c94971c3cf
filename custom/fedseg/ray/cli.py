"""The ``fedseg tune`` subcommand; importing this module does not import ray."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedseg.errors import ConfigError
from fedseg.run_dirs import non_negative_float, non_negative_int, positive_int
from fedseg.tasks import VARIANTS, get_task, task_names


def cmd_tune(a: argparse.Namespace) -> int:
    if a.federated:
        return _federated(a)
    from fedseg.ray.tune import run_tune
    from fedseg.site_config import load_site_config

    if not a.site_config or len(a.site_config) != 1:
        raise ConfigError("fedseg tune needs one --site-config (or --federated to search FL settings over sites)")
    a.site_config = a.site_config[0]
    spec = get_task(a.task, a.variant, a.optimizer)
    site = load_site_config(Path(a.site_config))
    out = Path(a.out or f"runs/{spec.name}_{site.site}_tune")
    result = run_tune(spec, site, out, trials=a.trials, epochs=a.epochs, grace_epochs=a.grace_epochs, seed=a.seed,
                      address=a.address, gpus_per_trial=a.gpus_per_trial)
    print(result.table())
    c = result.best_config
    print(f"best: lr {c['lr']:.3g}, num_samples {c['num_samples']}, weight_decay {c['weight_decay']:g}: "
          f"validation Dice {result.best_val_dice:.4f} at epoch {result.best_epoch}; "
          f"wall time {result.wall_time_s:.0f} s; results in {out / 'tune_results.json'}")
    return 0


def _federated(a: argparse.Namespace) -> int:
    """``fedseg tune --federated``: the sites are given YAMLs, or phantoms split IID over ``--sites``."""
    from fedseg.ray.fed_tune import run_federated_tune, table
    from fedseg.site_config import load_site_config

    if a.optimizer or a.gpus_per_trial:
        raise ConfigError("--optimizer and --gpus-per-trial are single-site settings; with --federated the sites' "
                          "YAMLs say where they train")
    out = Path(a.out or f"runs/{a.task}_federated_tune").resolve()
    if a.site_config:
        configs = {Path(p).stem: Path(p) for p in a.site_config}
        data_dir = Path(a.data) if a.data else load_site_config(Path(a.site_config[0])).task_data(a.task).data_root
    else:
        from fedseg.flare.simulate import prepare_sites

        data_dir = Path(a.data or f"data/{a.task}")
        folder = prepare_sites(a.task, data_dir, a.sites, out, cases=a.cases, seed=a.seed, splits_dir=out / "splits")
        configs = {f"site-{k}": folder / f"site-{k}.yaml" for k in range(1, a.sites + 1)}
    body = run_federated_tune(a.task, a.variant, configs, data_dir, out, trials=a.trials, epochs=a.epochs,
                              grace_epochs=a.grace_epochs, algorithms=tuple(a.algorithms), seed=a.seed,
                              address=a.address)
    print(table(body))
    best = body["best"]
    print(f"best: {best['setting']}: global validation Dice {best['val_dice']:.4f} after {best['epochs']} epochs; "
          f"wall time {body['wall_time_s']:.0f} s; results in {out / 'tune_results.json'}")
    return 0


def add_tune_command(subparsers) -> None:
    """Register ``fedseg tune`` on the main parser's subcommands."""
    from fedseg.algorithms import algorithm_names
    from fedseg.ray.fed_tune import ALGORITHMS

    p = subparsers.add_parser("tune", help="search learning rate, crops per volume and weight decay with Ray Tune; "
                                           "with --federated, FL settings over simulated sites")
    p.add_argument("--task", required=True, choices=task_names())
    p.add_argument("--variant", default="full", choices=VARIANTS,
                   help="full: the card's recipe; tiny: small patches and channels for CPU")
    p.add_argument("--site-config", action="append", default=None,
                   help="the site's YAML (training and validation cases); with --federated, one per site "
                        "(site-1.yaml, site-2.yaml, ... in one folder), given once each")
    p.add_argument("--federated", action="store_true",
                   help="search FL settings (algorithm and its options, local epochs, augmentation): every trial "
                        "a real NVFlare simulator job, ASHA on the global validation Dice of each round")
    p.add_argument("--sites", type=positive_int, default=2,
                   help="--federated without --site-config: phantom sites split IID from --data")
    p.add_argument("--data", default=None, help="--federated: dataset folder (default data/<task>)")
    p.add_argument("--cases", type=positive_int, default=30, help="--federated: phantoms to make if --data is missing")
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=algorithm_names(),
                   help="--federated: algorithms searched")
    p.add_argument("--trials", type=positive_int, default=8, help="settings to try (the first is the card's own)")
    p.add_argument("--epochs", type=positive_int, default=20,
                   help="most epochs a trial trains (--federated: every trial's total, rounds x local epochs)")
    p.add_argument("--grace-epochs", type=positive_int, default=2, help="epochs before early stopping may end a trial")
    p.add_argument("--optimizer", default=None, help="one of the task's optimizer choices")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", default=None, help="output folder (default runs/<task>_<site>_tune)")
    p.add_argument("--address", default=None, help="Ray cluster address (ray://host:port or auto)")
    p.add_argument("--gpus-per-trial", type=non_negative_float, default=0.0)
    p.set_defaults(func=cmd_tune)
