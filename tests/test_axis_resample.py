"""The per-axis trilinear resampling against MONAI's, on grids that orientation and respacing make."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import ResampleToMatch

from fedseg.axis_resample import axis_permutation, linear_weights, resample_parallel_axes

# A source grid stored with its axes permuted and flipped (as LPI/PIL files are), and a finer target.
SOURCE = np.array([[0, 0, -4.0, 100], [3.0, 0, 0, -20], [0, 2.5, 0, 7], [0, 0, 0, 1]])
TARGET = np.array([[1.3, 0, 0, -22], [0, 0.9, 0, 3], [0, 0, -1.5, 103], [0, 0, 0, 1]])


def _monai(image: torch.Tensor, src: np.ndarray, dst: np.ndarray, shape, padding: str) -> torch.Tensor:
    moving = MetaTensor(image, affine=torch.as_tensor(src, dtype=torch.float64))
    target = MetaTensor(torch.zeros(1, *shape), affine=torch.as_tensor(dst, dtype=torch.float64))
    return ResampleToMatch(mode="bilinear", padding_mode=padding)(moving, img_dst=target).as_tensor()


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("src,dst,shape", [(SOURCE, TARGET, (90, 120, 60)),  # up, past the source's edges
                                           (TARGET, SOURCE, (40, 37, 20))])  # and back down
def test_same_values_as_monai(src, dst, shape, padding):
    image = torch.rand(2, 40, 37, 20, generator=torch.Generator().manual_seed(0)) * 1000 - 500
    if src is TARGET:
        image = torch.rand(2, 90, 120, 60, generator=torch.Generator().manual_seed(1)) * 1000 - 500
    ours = resample_parallel_axes(image, np.linalg.solve(src, dst), shape, padding=padding)
    theirs = _monai(image, src, dst, shape, padding)
    assert ours.shape == theirs.shape == (2, *shape)
    assert (ours - theirs).abs().max() < 1e-3  # HU-like values: float32 rounding of coordinates only


def test_real_ct_back_from_the_training_grid(real_ct):
    """The way back in ``fedseg infer``: from a 3 x 3 x 4 mm grid onto the real CT's own (LPS-like) grid."""
    src = nib.load(str(real_ct))
    shape = src.shape[:3]
    ras = nib.as_closest_canonical(src)
    spacing = np.array([3.0, 3.0, 4.0])
    coarse = ras.affine @ np.diag([*(spacing / ras.header.get_zooms()[:3]), 1.0])
    coarse_shape = tuple(int(n) for n in np.ceil(np.array(ras.shape[:3]) * ras.header.get_zooms()[:3] / spacing))
    probs = torch.softmax(torch.randn(2, *coarse_shape, generator=torch.Generator().manual_seed(2)), 0)
    ours = resample_parallel_axes(probs, np.linalg.solve(coarse, src.affine), shape)
    theirs = _monai(probs, coarse, src.affine, shape, "zeros")
    assert (ours - theirs).abs().max() < 1e-5
    assert (torch.max(ours, 0).indices == torch.max(theirs, 0).indices).float().mean() > 0.99999


def test_oblique_map_is_left_to_monai():
    turn = np.eye(4)
    c, s = np.cos(0.3), np.sin(0.3)
    turn[:2, :2] = [[c, -s], [s, c]]
    assert axis_permutation(turn) is None
    assert resample_parallel_axes(torch.zeros(1, 4, 4, 4), turn, (4, 4, 4)) is None
    assert axis_permutation(np.linalg.solve(SOURCE, TARGET)) == (2, 0, 1)


def test_weights_sum_to_one_inside_and_fade_at_the_edges():
    sums = linear_weights(8, 4, 0.5, -0.25).sum(1)  # positions -0.25, 0.25, ..., 3.25 of indices 0..3
    assert torch.allclose(sums[1:-1], torch.ones(6)) and sums[0] == pytest.approx(0.75) == sums[-1]
    assert torch.allclose(linear_weights(8, 4, 0.5, -0.25, "border").sum(1), torch.ones(8))
    with pytest.raises(ValueError, match="padding must be one of"):
        linear_weights(3, 3, 1.0, 0.0, "reflection")
