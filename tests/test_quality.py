import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.image.fid import FrechetInceptionDistance

from ganprune.core.errors import UserError
from ganprune.metrics.quality import (PSNR_CAP, _Precomputed, fid_kid, frechet_distance, image_quality, load_feature_extractor, load_segmenter, miou, psnr, quantize, ssim)


def _images(n=4, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class Pairs(Dataset):
    """In-memory aligned pairs {"A", "B"}."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def __len__(self):
        return len(self.a)

    def __getitem__(self, i):
        return {"A": self.a[i], "B": self.b[i], "path": f"img{i}.png"}


class Identity(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))   # a parameter, so it can be moved like a generator

    def forward(self, x):
        return x * self.scale


class Brightness(nn.Module):
    """Two-class 'segmenter': a pixel is class 1 when its mean RGB (in [0, 1]) exceeds 0.5."""

    def forward(self, x):
        m = x.mean(1, keepdim=True)
        return torch.cat([0.5 - m, m - 0.5], 1)


class MeanColour(nn.Module):
    """Tiny scripted 'feature network': per-channel mean and std of the 299² input."""

    def forward(self, x):
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


def test_psnr_ssim_identical_and_known_noise():
    x = quantize(_images(4, 64) * 0.5)
    assert torch.equal(psnr(x, x), torch.full((4,), PSNR_CAP)) and torch.allclose(ssim(x, x), torch.ones(4))
    sigma = 0.01   # noise std on the [0, 1] scale: PSNR = 20 log10(1 / sigma) = 40 dB
    noisy = x + 2 * sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert psnr(noisy, x).shape == (4,)
    assert psnr(noisy, x).mean().item() == pytest.approx(20 * math.log10(1 / sigma), abs=0.15)
    noisy = x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))   # SSIM vs scikit-image
    a, b = ((x[0] + 1) / 2).permute(1, 2, 0).numpy(), ((noisy[0] + 1) / 2).permute(1, 2, 0).numpy()
    ref = structural_similarity(a, b, data_range=1, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert ssim(noisy[:1], x[:1]).item() == pytest.approx(ref, abs=0.01) and ref < 0.9


def test_quantize_and_bad_pairs():
    q = quantize(torch.tensor([-2.0, -1.0, 0.0, 0.3, 1.0, 5.0]))
    levels = (q + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4) and q.min() == -1 and q.max() == 1
    with pytest.raises(UserError, match="one shape"):
        psnr(_images(2), _images(3))
    with pytest.raises(UserError, match="11x11"):
        ssim(_images(1, 8), _images(1, 8))


def test_frechet_distance_matches_torchmetrics_and_is_zero_on_itself():
    g = torch.Generator().manual_seed(0)
    for n, d in ((6, 32), (60, 16)):   # N < D (nuclear-norm form) and N > D (symmetric form)
        a, b = torch.randn(n, d, generator=g).double(), (torch.randn(n, d, generator=g) * 1.3 + 0.2).double()
        ref = FrechetInceptionDistance(feature=_Precomputed(d))
        ref.update(a, real=True)
        ref.update(b, real=False)
        assert frechet_distance(a, b) == pytest.approx(float(ref.compute()), rel=1e-6)
        assert abs(frechet_distance(a, a)) < 1e-8


def test_fid_kid_mean_std_seeded(monkeypatch):
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(12, 8, generator=g), torch.randn(12, 8, generator=g) + 1.0
    r = fid_kid(real, fake, kid_subsets=20)
    # subsets of all 12 images are one set: a "std" over them would be rounding noise, so there is none
    assert r["fid"] > 5 and r["kid_mean"] > 0 and r["kid_std"] is None and r["kid_subset_size"] == 12
    assert r["kid_subsets"] == 1
    monkeypatch.setattr("ganprune.metrics.quality.KID_SUBSET_SIZE", 6)
    r = fid_kid(real, fake, kid_subsets=20)
    assert r["kid_std"] > 1e-6 and r["kid_subset_size"] == 6 and r["kid_subsets"] == 20
    assert fid_kid(real, fake, kid_subsets=20) == r                 # subsets are seeded
    monkeypatch.undo()
    assert fid_kid(real, fake, kid_subsets=20, kid_subset_size=6) == r   # the same subsets, asked for directly
    whole = fid_kid(real, fake, kid_subsets=20, kid_subset_size=50)      # lowered to the 12 there are
    assert whole["kid_subset_size"] == 12 and whole["kid_std"] is None
    with pytest.raises(UserError, match="kid_subset_size"):
        fid_kid(real, fake, kid_subset_size=1)
    assert fid_kid(real, real, kid=False)["fid"] == pytest.approx(0, abs=1e-8)
    with pytest.raises(UserError, match="at least 2"):
        fid_kid(real[:1], fake)


def test_miou_on_synthetic_labels():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 2, 0]])
    # class 0: inter 1, union 3; class 1: inter 2, union 3; class 2: inter 3, union 4
    assert miou(pred, target, 3) == pytest.approx((1 / 3 + 2 / 3 + 3 / 4) / 3)
    assert miou(target, target, 5) == 1.0                           # absent classes 3, 4 are not averaged
    assert miou(pred, target, 3, ignore_index=2) == pytest.approx((1 / 2 + 2 / 3) / 2)   # class 2 drops out
    with pytest.raises(UserError, match="shape"):
        miou(pred, target[:1], 3)


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning")
def test_image_quality_pixels_teacher_segmenter_and_scripted_features(tmp_path):
    a = quantize(_images(5, 32))
    data = Pairs(a, a.clone())
    seg_path, feat_path = tmp_path / "seg.pt", tmp_path / "feat.pt"
    torch.jit.script(Brightness()).save(str(seg_path))
    torch.jit.script(MeanColour()).save(str(feat_path))
    features = load_feature_extractor(feat_path)
    assert features.num_features == 6
    r = image_quality(Identity(), data, teacher=Identity(), n=4, batch_size=3, feature_extractor=features,
                      segmenter=load_segmenter(seg_path), kid_subsets=5, progress=False, split="val")
    assert r["psnr"] == r["psnr_teacher"] == PSNR_CAP and r["ssim"] == pytest.approx(1.0)
    assert r["miou"] == 1.0 and abs(r["fid"]) < 1e-6 and r["kid_std"] is None
    c = r["computed_on"]
    assert (c["n_images"], c["n_real"], c["resolution"], c["split"]) == (4, 4, "32x32", "val")
    assert str(feat_path) in c["inception"] and "299x299" in c["inception"] and c["kid"] == "all 4 images at once (too few for subsets: no std)"
    # a darker generator: pixel scores fall, FID rises; the unaligned-free DataLoader path truncates at n
    dark = Identity()
    dark.scale.data.fill_(0.5)
    loader = DataLoader(data, batch_size=2)
    d = image_quality(dark, loader, n=3, feature_extractor=features, kid=False, progress=False)
    assert d["computed_on"]["n_images"] == d["computed_on"]["n_real"] == 3
    assert d["psnr"] < 30 and d["ssim"] < 1 and d["fid"] > 1e-3 and d["kid_mean"] is None and d["psnr_teacher"] is None


def test_bad_feature_and_segmenter_files(tmp_path):
    bad = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(2)}, bad)
    with pytest.raises(UserError, match="missing key 'Conv2d_1a_3x3.conv.weight'"):   # not pytorch-fid's layout
        load_feature_extractor(bad)
    with pytest.raises(UserError, match="not found"):
        load_segmenter(tmp_path / "missing.pt")
    with pytest.raises(UserError, match="Dataset or DataLoader"):
        image_quality(Identity(), [1, 2], fid=False, kid=False, progress=False)


@pytest.mark.slow
def test_fid_inception_self_zero_shifted_positive():
    x = quantize(_images(6, 32) * 0.8)
    features = load_feature_extractor()
    with torch.no_grad():
        real, shifted = features(x), features(quantize(x * 0.5 + 0.4))
    assert real.shape == (6, 2048) and np.isfinite(real.numpy()).all()
    same, other = fid_kid(real, real), fid_kid(real, shifted)
    assert abs(same["fid"]) < 1e-3 and other["fid"] > 10
    assert other["kid_mean"] > same["kid_mean"] and same["kid_subset_size"] == 6
