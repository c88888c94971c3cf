"""Read a NIfTI file within fixed bounds: the header first, then the voxels as a stream.

nibabel parses the header (so a header is accepted exactly when ``nibabel.load``, which MONAI
uses, accepts it), but the bytes it sees are read here: at most ``MAX_HEADER_BYTES`` for the
header and its extensions, and the voxels in chunks of ``CHUNK_VOXELS`` from a gzip stream
that never inflates more than it is asked for. The size a header declares is checked against
the caller's limit before any voxel is read, and the voxels are never held in memory whole:
the scan keeps only what the checks need (range, non-finite count, foreground box, label values).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import nibabel as nib
import numpy as np
from nibabel import imageglobals
from scipy import ndimage
from nibabel.spatialimages import HeaderDataError

from fedseg.data.files import describe_non_regular, read_at_most

GZIP_MAGIC = b"\x1f\x8b"
MAX_HEADER_BYTES = 16 * 1024 * 1024  # header plus extensions (DICOM tags in extensions are ~100 KB)
CHUNK_VOXELS = 1 << 20  # voxels read at once (whole slices, at least one)
MAX_PLANE_VOXELS = 1 << 22  # one slice: 2048 x 2048 (CT and MR slices are 512 x 512 or less)
MAX_LABEL_VALUES = 256  # distinct label values tracked; more than that is refused anyway
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Voxel kinds the transforms load (LoadImaged reads them into float32): integers and reals.
SUPPORTED_KINDS = "iuf"
# nibabel reports the header fields it repairs on a logger; the check reports problems itself.
_NIBABEL_FIXES = logging.getLogger("fedseg.nibabel_header_fixes")
_NIBABEL_FIXES.addHandler(logging.NullHandler())
_NIBABEL_FIXES.propagate = False


class FileProblem(Exception):
    """A named problem with one file (``kind`` as in :class:`~fedseg.data.problems.Problem`)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class NiftiHeader:
    """What a NIfTI header declares, read without touching a voxel."""

    path: Path
    header: nib.Nifti1Header
    shape: tuple[int, ...]
    dtype: np.dtype
    affine: np.ndarray  # nibabel's best affine (sform, else qform), as nibabel and MONAI use it
    slope: float
    inter: float
    offset: int
    compressed: bool

    @property
    def n_voxels(self) -> int:
        return math.prod(self.shape)

    @property
    def n_bytes(self) -> int:
        return self.n_voxels * self.dtype.itemsize


@dataclass
class ChannelStats:
    """Range and foreground box of one channel (the last axis of a 4D file)."""

    lo: float = np.inf
    hi: float = -np.inf
    n_above: int = 0
    box_lo: np.ndarray = field(default_factory=lambda: np.full(3, np.iinfo(np.int64).max))
    box_hi: np.ndarray = field(default_factory=lambda: np.full(3, -1))
    has_block: bool = False  # a block of the requested size lies wholly above the threshold


@dataclass
class VolumeStats:
    """What a voxel scan found: per-channel stats, non-finite counts and (for labels) the values."""

    channels: list[ChannelStats]
    collect_values: bool = False
    n_non_finite: int = 0
    n_beyond_float32: int = 0
    non_integer: bool = False
    values: set[float] = field(default_factory=set)
    too_many_values: bool = False  # more than MAX_LABEL_VALUES distinct: no longer tracked

    def foreground_box(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Voxel box (inclusive) holding every voxel above the threshold in any channel, or None."""
        lo = np.min([c.box_lo for c in self.channels], axis=0)
        hi = np.max([c.box_hi for c in self.channels], axis=0)
        return None if np.any(hi < 0) else (lo, hi)


def _open(path: Path, compressed: bool) -> BinaryIO:
    raw = open(path, "rb")
    return gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw


def _close(fh: BinaryIO) -> None:
    inner = getattr(fh, "fileobj", None)
    fh.close()
    if inner is not None:
        inner.close()


@contextlib.contextmanager
def _stream(path: Path, compressed: bool, what: str) -> Iterator[BinaryIO]:
    """The file as a (decompressing) stream, closed on exit; read errors become named problems."""
    try:
        fh = _open(path, compressed)
        try:
            yield fh
        finally:
            _close(fh)
    except FileProblem:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise _stream_errors(what, exc) from None


def _stream_errors(what: str, exc: Exception) -> FileProblem:
    if isinstance(exc, EOFError):
        return FileProblem("truncated_file", f"{what} ends early, the file is truncated ({exc})")
    if isinstance(exc, (gzip.BadGzipFile, zlib.error)):
        return FileProblem("corrupt_file", f"{what} has corrupt compressed data ({exc})")
    return FileProblem("unreadable_file", f"{what} cannot be read ({getattr(exc, 'strerror', None) or exc})")


def _header_class(block: bytes):
    for klass in (nib.Nifti1Header, nib.Nifti2Header):  # nibabel.load tries them in this order
        if klass.may_contain_header(block):
            return klass
    return None


def read_header(path: Path, what: str) -> NiftiHeader:
    """Read and validate a NIfTI header, refusing with a :class:`FileProblem` whatever cannot be read.

    Only ``.nii`` and ``.nii.gz`` files are read (as MONAI's NIfTI reader does). Nothing beyond
    the header and its extensions (at most ``MAX_HEADER_BYTES``) is read or inflated.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileProblem("missing_file", f"{what} not found") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise FileProblem("unreadable_file", f"{what} cannot be opened ({reason})") from None
    kind = describe_non_regular(info.st_mode)
    if kind:
        raise FileProblem("not_a_file", f"{what} is {kind}, not a regular file")
    if info.st_size == 0:
        raise FileProblem("truncated_file", f"{what} is empty (0 bytes)")
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        raise FileProblem("not_nifti", f"{what} is not named .nii or .nii.gz; fedseg reads NIfTI files only")
    try:
        with open(path, "rb") as fh:
            start = fh.read(64)
    except OSError as exc:
        raise FileProblem("unreadable_file", f"{what} cannot be opened ({exc.strerror})") from None
    compressed = name.endswith(".gz")
    if compressed and not start.startswith(GZIP_MAGIC):
        looks = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in start) else "binary data"
        raise FileProblem("not_nifti", f"{what} is named .gz but holds {looks}, not gzip-compressed NIfTI")
    if not compressed and start.startswith(GZIP_MAGIC):
        raise FileProblem("not_nifti", f"{what} is named .nii but is gzip-compressed: name it .nii.gz")
    with _stream(path, compressed, what) as fh:
        head = read_at_most(fh, nib.Nifti2Header.sizeof_hdr + 4)
        klass = _header_class(head)
        if klass is None:
            if len(head) < nib.Nifti1Header.sizeof_hdr:
                raise FileProblem("truncated_file", f"{what} ends inside the NIfTI header ({len(head)} bytes)")
            raise FileProblem("not_nifti", f"{what} is not a NIfTI file (no NIfTI-1 or NIfTI-2 header)")
        declared = float(klass(head[: klass.sizeof_hdr], check=False)["vox_offset"])
        if not np.isfinite(declared) or declared > MAX_HEADER_BYTES:
            raise FileProblem("bad_header", f"{what} declares its voxels start after {declared:,.0f} bytes of "
                                            f"header extensions; at most {MAX_HEADER_BYTES:,} are read")
        head += read_at_most(fh, max(int(declared) - len(head), 0))
    try:
        header = klass.from_fileobj(io.BytesIO(head), check=False)
        check_voxel_type(header, what)
        # The same repairs and refusals as nibabel.load (which checks on construction), told quietly.
        header.check_fix(logger=_NIBABEL_FIXES, error_level=imageglobals.error_level)
        shape = tuple(int(n) for n in header.get_data_shape())
        if any(n < 0 for n in shape):
            raise HeaderDataError(f"negative dimension in shape {shape}")
        dtype = header.get_data_dtype()
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
        slope, inter = header.get_slope_inter()
        offset = int(header.get_data_offset())
    except (HeaderDataError, ValueError, TypeError, OverflowError) as exc:
        raise FileProblem("bad_header", f"{what} has an invalid NIfTI header ({exc})") from None
    return NiftiHeader(path, header, shape, dtype, affine, 1.0 if slope is None else float(slope),
                       0.0 if inter is None else float(inter), offset, compressed)


_TYPE_NAMES = {"c": "complex-valued", "V": "structured (RGB/RGBA)", "b": "boolean"}


def check_voxel_type(header: nib.Nifti1Header, what: str) -> None:
    """Refuse voxel types the transforms cannot load: complex, RGB/RGBA, binary (boolean), float128.

    Read from the header's ``datatype`` code, so a type nibabel cannot even map to NumPy (binary,
    float128) is named as what it is rather than as a broken header.
    """
    code = int(header["datatype"])
    codes = nib.nifti1.data_type_codes
    if code not in codes.code:
        return  # an unknown code is a broken header: nibabel's own check names it
    label, dtype = codes.label[code], np.dtype(codes.dtype[code])
    if dtype.kind not in SUPPORTED_KINDS or dtype.itemsize == 0 or dtype.itemsize > 8:
        kind = "boolean" if label == "binary" else _TYPE_NAMES.get(dtype.kind, "unsupported")
        raise FileProblem("unsupported_dtype", f"{what} stores {kind} voxels (NIfTI type {label}); "
                                               f"integer or real (float32/64) voxels are needed")


def _values(chunk: np.ndarray) -> np.ndarray:
    if chunk.dtype.kind in "iu" and chunk.size:
        lo = int(chunk.min())
        span = int(chunk.max()) - lo
        if span < 65536:  # bincount is ~20x faster than unique on label maps
            return np.flatnonzero(np.bincount(chunk.astype(np.int64) - lo)) + lo
    return np.unique(chunk)


def scan_voxels(hdr: NiftiHeader, what: str, *, threshold: float | None, collect_values: bool = False,
                block: tuple[int, int, int] | None = None) -> VolumeStats:
    """Stream every voxel once and gather the statistics the checks need, in bounded memory.

    Voxels are read a few slices (planes of the first two axes) at a time. ``threshold``: voxels
    above it count as foreground (the box the foreground crop keeps); None records none.
    ``block``: also find whether some block of that many voxels per axis lies wholly above the
    threshold (``ChannelStats.has_block``). Scaling (``scl_slope``/``scl_inter``) is applied as
    nibabel does.
    """
    nx, ny, nz = tuple(hdr.shape[:3]) + (1,) * max(0, 3 - len(hdr.shape))
    plane = nx * ny
    if plane > MAX_PLANE_VOXELS:
        raise FileProblem("too_large", f"{what} has slices of {nx} x {ny} = {plane:,} voxels; at most "
                                       f"{MAX_PLANE_VOXELS:,} per slice are read")
    n_channels = int(np.prod(hdr.shape[3:], dtype=np.int64)) if len(hdr.shape) > 3 else 1
    stats = VolumeStats([ChannelStats() for _ in range(n_channels)], collect_values=collect_values)
    per_chunk = max(1, CHUNK_VOXELS // plane)
    with _stream(hdr.path, hdr.compressed, what) as fh:
        _skip(fh, hdr)
        for c in range(n_channels):
            scan = _ChannelScan(stats, stats.channels[c], (nx, ny), threshold, block)
            for z in range(0, nz, per_chunk):
                n = min(per_chunk, nz - z) * plane
                raw = read_at_most(fh, n * hdr.dtype.itemsize)
                if len(raw) < n * hdr.dtype.itemsize:
                    got = (c * nz + z) * plane + len(raw) // hdr.dtype.itemsize
                    raise FileProblem("truncated_file", f"{what} holds {got:,} of the {hdr.n_voxels:,} voxels "
                                                        f"its header declares: the file is truncated")
                chunk = np.frombuffer(raw, dtype=hdr.dtype)
                if hdr.slope != 1.0 or hdr.inter != 0.0:
                    chunk = chunk * hdr.slope + hdr.inter  # float64, as nibabel scales
                scan.add(chunk, z)
    return stats


def _skip(fh: BinaryIO, hdr: NiftiHeader) -> None:
    """Move to the first voxel (a gzip stream is inflated up to it, in bounded steps)."""
    if not hdr.compressed:
        fh.seek(hdr.offset)
        return
    skipped = 0
    while skipped < hdr.offset:
        step = len(read_at_most(fh, min(hdr.offset - skipped, 1 << 20)))
        if not step:
            break
        skipped += step


class _ChannelScan:
    """Statistics of one channel, fed a few whole slices at a time."""

    def __init__(self, stats: VolumeStats, ch: ChannelStats, plane: tuple[int, int], threshold: float | None,
                 block: tuple[int, int, int] | None):
        self.stats, self.ch, self.plane, self.threshold, self.block = stats, ch, plane, threshold, block
        # Per in-plane position: how many consecutive slices so far hold a whole in-plane block there.
        self.run = np.zeros(plane, np.int32) if block is not None and threshold is not None else None

    def add(self, chunk: np.ndarray, z0: int) -> None:
        stats, ch = self.stats, self.ch
        usable = True
        if chunk.dtype.kind == "f":
            finite = np.isfinite(chunk)
            n_bad = chunk.size - int(np.count_nonzero(finite))
            if n_bad:
                stats.n_non_finite += n_bad
                chunk, usable = chunk[finite], False  # refused anyway: no geometry from this chunk
            if chunk.size and chunk.dtype.itemsize > 4:
                stats.n_beyond_float32 += int(np.count_nonzero(np.abs(chunk) > FLOAT32_MAX))
            if stats.collect_values and chunk.size and not stats.non_integer:
                stats.non_integer = bool(np.any(chunk != np.round(chunk)))
        if not chunk.size:
            return
        ch.lo, ch.hi = min(ch.lo, float(chunk.min())), max(ch.hi, float(chunk.max()))
        if stats.collect_values and not stats.too_many_values:
            stats.values.update(_values(chunk).tolist())
            if len(stats.values) > MAX_LABEL_VALUES:
                stats.too_many_values = True
        if self.threshold is not None and usable:
            self._foreground(chunk.reshape(self.plane + (-1,), order="F"), z0)

    def _foreground(self, slab: np.ndarray, z0: int) -> None:
        ch = self.ch
        mask = slab > self.threshold
        above = int(np.count_nonzero(mask))
        if not above:
            if self.run is not None:
                self.run[:] = 0
            return
        ch.n_above += above
        for axis, hit in enumerate((mask.any(axis=(1, 2)), mask.any(axis=(0, 2)), mask.any(axis=(0, 1)))):
            where = np.flatnonzero(hit) + (z0 if axis == 2 else 0)
            ch.box_lo[axis] = min(ch.box_lo[axis], int(where[0]))
            ch.box_hi[axis] = max(ch.box_hi[axis], int(where[-1]))
        if self.run is not None and not ch.has_block:
            bx, by, bz = self.block
            for k in range(mask.shape[2]):
                inplane = mask[:, :, k].view(np.uint8)
                if bx > 1:
                    inplane = ndimage.minimum_filter1d(inplane, bx, axis=0, mode="constant", cval=0)
                if by > 1:
                    inplane = ndimage.minimum_filter1d(inplane, by, axis=1, mode="constant", cval=0)
                self.run = np.where(inplane > 0, self.run + 1, 0)
                if self.run.max() >= bz:
                    ch.has_block = True
                    return
