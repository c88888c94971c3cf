"""Where and how the engine runs: device, mixed precision, threads, caching."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
import torch.utils.deterministic
from monai.utils import set_determinism

from fedseg.errors import ConfigError
from fedseg.site_config import PRECISIONS

log = logging.getLogger("fedseg")


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # resolved: fp32 | bf16 | fp16 (see resolve_precision)
    num_workers: int = 0
    cache_rate: float = 1.0
    num_threads: int | None = None
    # Deterministic algorithms (cuDNN and torch) so that a seed fixes every number of a run on one
    # machine; off, cuDNN may autotune its kernels (faster on GPUs, no longer repeatable).
    deterministic: bool = True
    # Activations in channels-last (NDHWC) order for 3D networks; None: on CPU, where oneDNN's
    # convolutions are faster in it (see memory_format).
    channels_last: bool | None = None
    # MONAI's fast-training levers for the training data (cached volumes moved to the device, random
    # crops and augmentation there, a ThreadDataLoader); None: on CUDA, where the CPU would otherwise
    # feed the GPU. On a CPU the data is there already and the loader thread competes with compute.
    device_cache: bool | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def caches_on_device(self) -> bool:
        return self.cuda if self.device_cache is None else self.device_cache

    @property
    def amp(self) -> bool:
        """Mixed precision (autocast) is on."""
        return self.precision != "fp32"

    @staticmethod
    def create(device: str = "auto", *, precision: str = "auto", amp: bool = True, num_workers: int = 0,
               cache_rate: float = 1.0, num_threads: int | None = None, deterministic: bool = True,
               channels_last: bool | None = None, device_cache: bool | None = None) -> "Runtime":
        """Resolve ``auto`` to CUDA when present and ``precision`` for that device (``amp=False``: fp32).

        ``num_threads`` fixes torch's intra-op threads: CPU results depend on it (a reduction split
        over a different number of threads rounds differently), so repeatable runs need it fixed.
        """
        dev = resolve_device(device)
        if num_threads:
            torch.set_num_threads(num_threads)
        if dev.type == "cuda" and not deterministic:
            torch.backends.cudnn.benchmark = True  # fixed patch sizes: let cuDNN pick the fastest kernels
        return Runtime(dev, resolve_precision(precision if amp else "fp32", dev), num_workers=num_workers,
                       cache_rate=cache_rate, num_threads=num_threads, deterministic=deterministic,
                       channels_last=channels_last, device_cache=device_cache)

    @staticmethod
    def for_site(site, *, device: str | None = None, num_threads: int | None = None, precision: str | None = None,
                 amp: bool = True) -> "Runtime":
        """The runtime a site's YAML asks for, with optional command-line overrides."""
        try:
            return Runtime.create(device or site.device, precision=precision or site.precision, amp=amp,
                                  num_workers=site.num_workers, cache_rate=site.cache_rate,
                                  num_threads=num_threads or site.num_threads)
        except ConfigError as exc:
            raise ConfigError(f"site {site.site!r} ({site.path}): {exc}") from None

    def memory_format(self, spatial_dims: int) -> torch.memory_format:
        """The memory format a network of ``spatial_dims`` dimensions (and its inputs) should use here.

        Channels-last 3D on CPU: oneDNN's convolutions need no layout reorders in it; a full-size spleen
        training step measured 1.4-1.7x faster in fp32 with a quarter less peak memory and half the page
        faults (bench/README.md, "Profile"). CUDA stays contiguous until it is measured there.
        """
        wanted = self.device.type == "cpu" if self.channels_last is None else self.channels_last
        return torch.channels_last_3d if wanted and spatial_dims == 3 else torch.contiguous_format

    def autocast(self):
        """The autocast context of this runtime's precision (a no-op for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)


def cpu_has_native_bf16() -> bool:
    """AMX or AVX-512 BF16 on this CPU: bf16 kernels in hardware (elsewhere torch emulates them)."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu's own probes (private)
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


# Replaces what ``precision: auto`` picks on every device (fp32, bf16 or fp16); the test suite sets
# fp32 so that its quality bars, measured in fp32, hold on CPUs with and without bf16 hardware.
AUTO_PRECISION_ENV = "FEDSEG_AUTO_PRECISION"


def auto_precision(device: torch.device) -> str:
    """What ``precision: auto`` means on ``device``: fp16 AMP on CUDA; bf16 on a CPU with AMX or
    AVX-512 BF16, fp32 on other CPUs; ``$FEDSEG_AUTO_PRECISION`` replaces the choice.

    bf16 on such a CPU: a full-size spleen training step 2-3x faster and sliding-window inference
    about 2x (bench/profiling.py), with validation Dice within 0.005 of fp32 and the same Dice after
    training (tests/test_precision.py, bench/README.md). Without the hardware torch emulates bf16:
    evaluation measured 17x slower than fp32 on an AVX2-only CPU, so those CPUs keep fp32.
    """
    forced = os.environ.get(AUTO_PRECISION_ENV)
    if forced:
        if forced not in PRECISIONS or forced == "auto":
            raise ConfigError(f"${AUTO_PRECISION_ENV} is {forced!r}; allowed: fp32, bf16, fp16")
        return forced
    if device.type == "cuda":
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto`` -> :func:`auto_precision`; an explicit choice (or a forced one) is checked against the device."""
    if requested not in PRECISIONS:
        raise ConfigError(f"'precision' is {requested!r}; allowed: {', '.join(PRECISIONS)}")
    if requested == "auto":
        requested = auto_precision(device)
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError(f"'precision: fp16' needs a CUDA device (this runs on {device.type}); use bf16 or fp32")
    if requested == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("fedseg: precision bf16 on a CPU without AMX or AVX-512 BF16: torch emulates it, several "
                    "times slower than fp32")
    return requested


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
    # Deterministic mode also fills every new uninitialised tensor with NaN, a debugging aid that
    # repeatable results do not need: it took 30% of a sliding-window pass and of a full-size training
    # step on CPU (torch.profiler: aten::fill_; bench/README.md, "Profile").
    torch.utils.deterministic.fill_uninitialized_memory = False
    if not deterministic:  # set_determinism always pins cuDNN; give it back its autotuning
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
