"""The ``fedseg tune`` subcommand; importing this module does not import ray."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedseg.run_dirs import non_negative_float, non_negative_int, positive_int
from fedseg.tasks import VARIANTS, get_task, task_names


def cmd_tune(a: argparse.Namespace) -> int:
    from fedseg.ray.tune import run_tune
    from fedseg.site_config import load_site_config

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


def add_tune_command(subparsers) -> None:
    """Register ``fedseg tune`` on the main parser's subcommands."""
    p = subparsers.add_parser("tune", help="search learning rate, crops per volume and weight decay with Ray Tune")
    p.add_argument("--task", required=True, choices=task_names())
    p.add_argument("--variant", default="full", choices=VARIANTS,
                   help="full: the card's recipe; tiny: small patches and channels for CPU")
    p.add_argument("--site-config", required=True, help="the site's YAML (training and validation cases)")
    p.add_argument("--trials", type=positive_int, default=8, help="settings to try (the first is the card's own)")
    p.add_argument("--epochs", type=positive_int, default=20, help="most epochs a trial trains")
    p.add_argument("--grace-epochs", type=positive_int, default=2, help="epochs before early stopping may end a trial")
    p.add_argument("--optimizer", default=None, help="one of the task's optimizer choices")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", default=None, help="output folder (default runs/<task>_<site>_tune)")
    p.add_argument("--address", default=None, help="Ray cluster address (ray://host:port or auto)")
    p.add_argument("--gpus-per-trial", type=non_negative_float, default=0.0)
    p.set_defaults(func=cmd_tune)
