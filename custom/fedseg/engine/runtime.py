"""Where and how the engine runs: device, mixed precision, threads, caching."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from monai.utils import set_determinism

from fedseg.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp: bool
    num_workers: int = 0
    cache_rate: float = 1.0
    num_threads: int | None = None
    # Deterministic algorithms (cuDNN and torch) so that a seed fixes every number of a run on one
    # machine; off, cuDNN may autotune its kernels (faster on GPUs, no longer repeatable).
    deterministic: bool = True

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @staticmethod
    def create(device: str = "auto", *, amp: bool = True, num_workers: int = 0, cache_rate: float = 1.0,
               num_threads: int | None = None, deterministic: bool = True) -> "Runtime":
        """Resolve ``auto`` to CUDA when present; AMP is used only on CUDA (it slows CPU training).

        ``num_threads`` fixes torch's intra-op threads: CPU results depend on it (a reduction split
        over a different number of threads rounds differently), so repeatable runs need it fixed.
        """
        dev = resolve_device(device)
        if num_threads:
            torch.set_num_threads(num_threads)
        if dev.type == "cuda" and not deterministic:
            torch.backends.cudnn.benchmark = True  # fixed patch sizes: let cuDNN pick the fastest kernels
        return Runtime(dev, amp=amp and dev.type == "cuda", num_workers=num_workers, cache_rate=cache_rate,
                       num_threads=num_threads, deterministic=deterministic)

    @staticmethod
    def for_site(site, *, device: str | None = None, num_threads: int | None = None, amp: bool = True) -> "Runtime":
        """The runtime a site's YAML asks for, with optional command-line overrides."""
        return Runtime.create(device or site.device, amp=amp, num_workers=site.num_workers,
                              cache_rate=site.cache_rate, num_threads=num_threads or site.num_threads)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine (use 'auto' or 'cpu')")
    return torch.device(device)


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) with MONAI's ``set_determinism``.

    With ``deterministic`` torch also uses deterministic algorithms where it has them, and only
    warns where it has none (a few CUDA kernels, e.g. some backward passes of interpolation),
    so a run on one machine with one thread count repeats exactly. Randomised MONAI transforms
    keep their own random states: they are seeded where they are built (``set_random_state``).
    Across machines numbers still differ in the last bits (other CPU instruction sets, other
    GPU kernels), and training amplifies those differences: bars in tests come from measured
    spreads over seeds, not from one run.
    """
    if deterministic:
        # cuBLAS needs this before its first call to be deterministic on CUDA >= 10.2.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_determinism(seed=seed % 2**32)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if not deterministic:  # set_determinism always pins cuDNN; give it back its autotuning
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
