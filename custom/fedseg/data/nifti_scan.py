"""Read a NIfTI file within fixed bounds: the header first, then the voxels as a stream.

nibabel parses the header (so a header is accepted exactly when ``nibabel.load``, which MONAI
uses, accepts it), but the bytes it sees are read here: at most ``MAX_HEADER_BYTES`` for the
header and its extensions, and the voxels in chunks of ``CHUNK_VOXELS`` from a gzip stream
that never inflates more than it is asked for. The size a header declares is checked against
the caller's limit before any voxel is read, and the voxels are never held in memory whole:
the scan keeps only what the checks need (range, non-finite count, foreground box, label values).
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np
from nibabel import imageglobals
from nibabel.spatialimages import HeaderDataError

from fedseg.data.files import describe_non_regular

GZIP_MAGIC = b"\x1f\x8b"
MAX_HEADER_BYTES = 16 * 1024 * 1024  # header plus extensions (DICOM tags in extensions are ~100 KB)
CHUNK_VOXELS = 1 << 20
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


def _read(fh: BinaryIO, n: int) -> bytes:
    """Read up to ``n`` bytes (fewer only at the end); a gzip stream inflates no more than that."""
    parts, got = [], 0
    while got < n:
        part = fh.read(min(n - got, 1 << 24))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


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
        raise FileProblem("unreadable_file", f"{what} cannot be opened ({getattr(exc, 'strerror', None) or exc})") from None
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
            magic = fh.read(2)
    except OSError as exc:
        raise FileProblem("unreadable_file", f"{what} cannot be opened ({exc.strerror})") from None
    compressed = name.endswith(".gz")
    if compressed != (magic == GZIP_MAGIC):
        raise FileProblem("not_nifti", f"{what} is named {'.nii.gz' if compressed else '.nii'} but "
                                       f"{'is not' if compressed else 'is'} gzip-compressed")
    try:
        fh = _open(path, compressed)
        try:
            head = _read(fh, nib.Nifti2Header.sizeof_hdr + 4)
            klass = _header_class(head)
            if klass is None:
                if len(head) < nib.Nifti1Header.sizeof_hdr:
                    raise FileProblem("truncated_file", f"{what} ends inside the NIfTI header ({len(head)} bytes)")
                raise FileProblem("not_nifti", f"{what} is not a NIfTI file (no NIfTI-1 or NIfTI-2 header)")
            declared = klass(head[: klass.sizeof_hdr], check=False)
            offset = int(declared["vox_offset"])
            if offset > MAX_HEADER_BYTES:
                raise FileProblem("bad_header", f"{what} declares its voxels start after {offset:,} bytes of "
                                                f"header extensions; at most {MAX_HEADER_BYTES:,} are read")
            head += _read(fh, max(offset - len(head), 0))
        finally:
            _close(fh)
    except FileProblem:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise _stream_errors(what, exc) from None
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


def _update_box(stats: ChannelStats, mask: np.ndarray, start: int, shape3: tuple[int, int, int]) -> None:
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return
    stats.n_above += int(idx.size)
    yz, x = np.divmod(idx + start, shape3[0])
    z, y = np.divmod(yz, shape3[1])
    for axis, coord in enumerate((x, y, z)):
        stats.box_lo[axis] = min(stats.box_lo[axis], int(coord.min()))
        stats.box_hi[axis] = max(stats.box_hi[axis], int(coord.max()))


def _values(chunk: np.ndarray) -> np.ndarray:
    if chunk.dtype.kind in "iu" and chunk.size:
        lo = int(chunk.min())
        span = int(chunk.max()) - lo
        if span < 65536:  # bincount is ~20x faster than unique on label maps
            return np.flatnonzero(np.bincount(chunk.astype(np.int64) - lo)) + lo
    return np.unique(chunk)


def scan_voxels(hdr: NiftiHeader, what: str, *, threshold: float | None, collect_values: bool = False) -> VolumeStats:
    """Stream every voxel once and gather the statistics the checks need, in bounded memory.

    ``threshold``: voxels above it count as foreground (the box the foreground crop keeps);
    None records no box. Scaling (``scl_slope``/``scl_inter``) is applied as nibabel does.
    """
    shape3 = tuple(hdr.shape[:3]) + (1,) * max(0, 3 - len(hdr.shape))
    per_channel = int(np.prod(shape3, dtype=np.int64))
    n_channels = int(np.prod(hdr.shape[3:], dtype=np.int64)) if len(hdr.shape) > 3 else 1
    stats = VolumeStats([ChannelStats() for _ in range(n_channels)], collect_values=collect_values)
    scaled = hdr.slope != 1.0 or hdr.inter != 0.0
    itemsize = hdr.dtype.itemsize
    try:
        fh = _open(hdr.path, hdr.compressed)
        try:
            if hdr.compressed:
                skipped = 0
                while skipped < hdr.offset:
                    step = len(_read(fh, min(hdr.offset - skipped, 1 << 20)))
                    if not step:
                        break
                    skipped += step
            else:
                fh.seek(hdr.offset)
            for c in range(n_channels):
                done = 0
                while done < per_channel:
                    n = min(CHUNK_VOXELS, per_channel - done)
                    raw = _read(fh, n * itemsize)
                    if len(raw) < n * itemsize:
                        got = c * per_channel + done + len(raw) // itemsize
                        raise FileProblem("truncated_file", f"{what} holds {got:,} of the {hdr.n_voxels:,} voxels "
                                                            f"its header declares: the file is truncated")
                    chunk = np.frombuffer(raw, dtype=hdr.dtype)
                    if scaled:
                        chunk = chunk * hdr.slope + hdr.inter  # float64, as nibabel scales
                    _scan_chunk(stats, stats.channels[c], chunk, done, shape3, threshold)
                    done += n
        finally:
            _close(fh)
    except FileProblem:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise _stream_errors(what, exc) from None
    return stats


def _scan_chunk(stats: VolumeStats, ch: ChannelStats, chunk: np.ndarray, start: int,
                shape3: tuple[int, int, int], threshold: float | None) -> None:
    if chunk.dtype.kind == "f":
        finite = np.isfinite(chunk)
        n_bad = chunk.size - int(np.count_nonzero(finite))
        if n_bad:
            stats.n_non_finite += n_bad
            chunk = chunk[finite]
            start = -1  # positions no longer map to voxels: skip the box for this chunk
        if chunk.size and chunk.dtype.itemsize > 4:
            stats.n_beyond_float32 += int(np.count_nonzero(np.abs(chunk) > FLOAT32_MAX))
        if stats.collect_values and chunk.size and not stats.non_integer:
            stats.non_integer = bool(np.any(chunk != np.round(chunk)))
    if not chunk.size:
        return
    ch.lo, ch.hi = min(ch.lo, float(chunk.min())), max(ch.hi, float(chunk.max()))
    if threshold is not None and start >= 0:
        _update_box(ch, chunk > threshold, start, shape3)
    if stats.collect_values and not stats.too_many_values:
        stats.values.update(_values(chunk).tolist())
        if len(stats.values) > MAX_LABEL_VALUES:
            stats.too_many_values = True
