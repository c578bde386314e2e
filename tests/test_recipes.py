"""Each recipe on tiny nets (unet_64 ngf 8, basic D ndf 8, batch 2 at 64²): finite losses, a gradient for
every trainable parameter, and its distillation/task objective falling on a fixed batch."""
import copy

import numpy as np
import pytest
import torch

from ganprune.core.errors import UserError
from ganprune.train.recipe import get_recipe
from ganprune.train.trainer import build_phases, train_step
from ganprune.models.networks import init_weights
from ganprune.models.checkpoint import load_discriminator, load_generator
from ganprune.pruning.physical import prune, pruned_info
from ganprune.pruning.space import SearchSpace


def images(n, generator):
    return torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=generator), size=64,
                                           mode="bilinear") * 2 - 1



pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    TG, TD = load_generator(None, arch="unet_64", ngf=8), load_discriminator(None, ndf=8)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # BatchNorm statistics of a "trained" teacher (fresh ones are 0/1)
        for m in [*TG.modules(), *TD.modules()]:
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        for _ in range(4):
            a = images(8, g)
            TD(torch.cat([a, TG(a)], 1))
    for T in (TG, TD):
        T.eval()
        for m in T.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.1
    x, xd = torch.zeros(1, 3, 64, 64), torch.zeros(1, 6, 64, 64)
    G = prune(TG, SearchSpace.from_model(TG, x, arch="unet_64").uniform(0.5), x)
    D = prune(TD, SearchSpace.from_model(TD, xd, arch="basic").uniform(0.5), xd)
    assert pruned_info(G).widths["down1"] == 4 and pruned_info(D).widths
    TG.requires_grad_(False)
    TD.requires_grad_(False)
    torch.manual_seed(2)
    init_weights(G)  # a student well away from the teacher, so distillation has something to do
    a = images(2, g)
    return {"TG": TG, "TD": TD, "G": G, "D": D, "batch": {"A": a, "B": -a.flip(-1)}}


def make(nets, name, paired=True, student_G=None, student_D=None, **options):
    G = copy.deepcopy(student_G if student_G is not None else nets["G"]).train()
    D = copy.deepcopy(student_D if student_D is not None else nets["D"]).train()
    return get_recipe(name)(G, D, nets["TG"], nets["TD"], paired, options, conditional_D=True)  # D takes cat(A, B)


def train(rec, batch, steps, lr=2e-4):
    opts, phases, trainables = build_phases(rec, lr)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    history = []
    for step in range(steps):
        rec.step, rec.steps = step, steps
        losses, logs = train_step(rec, phases, trainables, scaler, batch, torch.device("cpu"))
        assert all(torch.isfinite(v) for v in losses.values()), (step, losses)
        if step == 0:
            check_gradients(rec, phases)
        history.append({k: float(v) for k, v in logs.items()})
    return history


def check_gradients(rec, phases):
    """Every trainable parameter got a finite gradient, and every trained module a non-zero one."""
    for ph in phases:
        for p in ph.params:
            assert p.grad is not None and torch.isfinite(p.grad).all(), ph.name
    modules = {"G": rec.student_G, **{f"extra {i}": m for i, m in enumerate(
        [*rec.generator_extras(), *rec.discriminator_extras()])}}
    if rec.trains_student_D:
        modules["D"] = rec.student_D
    else:  # no D phase: the student D got no gradient at all
        assert "D" not in [ph.name for ph in phases]
        assert all(p.grad is None for p in rec.student_D.parameters())
    for name, m in modules.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters()), name


def falls(history, *keys, n=4):
    series = [sum(h[k] for k in keys) for h in history]
    first, last = np.mean(series[:n]), np.mean(series[-n:])
    assert last < first, (keys, first, last)
    return first, last


def test_pix2pix(nets):
    history = train(make(nets, "pix2pix"), nets["batch"], 16, lr=1e-3)
    falls(history, "G_L1")
    with pytest.raises(UserError, match="needs paired"):
        make(nets, "pix2pix", paired=False)


def test_density(nets):
    history = train(make(nets, "density"), nets["batch"], 16, lr=1e-3)
    falls(history, "loss_G")
    # the density term alone pulls the student's local output density towards the teacher's
    history = train(make(nets, "density", lambda_l1=0.0, lambda_gan=0.0), nets["batch"], 12)
    first, last = falls(history, "G_density")
    assert first > 0


def test_density_unpaired_uses_teacher_as_target(nets):
    rec = make(nets, "density", paired=False, lambda_density=0.0, lambda_gan=0.0)
    out = rec.forward(nets["batch"])
    loss, logs = rec.generator_loss(out)
    with torch.no_grad():
        expected = (out["fake"] - nets["TG"](nets["batch"]["A"])).abs().mean()
    assert float(logs["G_L1"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(100 * float(expected), rel=1e-5)


def test_option_checks(nets):
    with pytest.raises(UserError, match="unknown option"):
        make(nets, "density", lambda_l2=1.0)
    with pytest.raises(UserError, match="m: expected an integer >= 2"):
        make(nets, "density", m=1)
    with pytest.raises(UserError, match="gan_mode"):
        make(nets, "pix2pix", gan_mode="wgan")
    with pytest.raises(UserError, match="weight >= 0"):
        make(nets, "density", lambda_density=-1)


def test_dgl(nets):
    rec = make(nets, "dgl")
    history = train(rec, nets["batch"], 16, lr=1e-3)
    falls(history, "G_L1")
    assert all(h["G_adv_teacher_d"] > 0 for h in history)
    assert not any(p.requires_grad or p.grad is not None for p in nets["TD"].parameters())
    with torch.no_grad():  # the term is the teacher D's verdict on the student's output
        out = rec.forward(nets["batch"])
        _, logs = rec.generator_loss(out)
        expected = rec.gan(nets["TD"](torch.cat([out["A"], out["fake"]], 1)), True)
    assert float(logs["G_adv_teacher_d"]) == pytest.approx(float(expected), rel=1e-5)
    terms_finite_and_nonzero(logs, ["G_adv", "G_adv_teacher_d", "G_L1"])
    assert rec.options["lambda_teacher_d"] == 0.1  # DGL-GAN's published weight


def terms_finite_and_nonzero(logs, keys):
    for k in keys:
        assert k in logs and np.isfinite(float(logs[k])) and float(logs[k]) > 0, (k, logs.get(k))


def student_D_untouched(rec, D_before, batch, steps=3):
    """Train ``steps`` steps counting student-D forwards: none may happen, and D keeps its weights."""
    calls = []
    handle = rec.student_D.register_forward_hook(lambda *_: calls.append(1))
    try:
        history = train(rec, batch, steps)
    finally:
        handle.remove()
    assert not calls
    assert all(torch.equal(a, b) for a, b in zip(D_before.state_dict().values(), rec.student_D.state_dict().values()))
    return history


def test_dcd(nets):
    rec = make(nets, "dcd")
    assert not rec.trains_student_D
    out = rec.forward(nets["batch"])
    assert [f.shape[1] for f in out["student_feats"]] == [4, 8, 16, 32]  # pruned widths of the 4 taps
    assert [f.shape[1] for f in out["teacher_feats"]] == [8, 16, 32, 64]
    # the teacher-output terms: Gram-L1 and feature-L1 on the feature network, to the teacher's output
    loss, logs = rec.generator_loss(out)
    terms_finite_and_nonzero(logs, ["G_style", "G_feature", "G_dcd"])
    assert "G_adv_teacher_d" not in logs  # the released pix2pix distiller gives the student no GAN term
    style, feature = rec.perceptual(out["fake"], out["teacher_fake"])
    assert float(logs["G_style"]) == pytest.approx(float(style.detach()), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float((1e4 * style + 10 * feature).detach() + logs["G_dcd"]), rel=1e-5)
    with torch.no_grad():  # the online teacher's output, before any update: the given teacher's
        assert torch.allclose(out["teacher_fake"], copy.deepcopy(nets["TG"]).train()(nets["batch"]["A"]), atol=1e-5)
    rec.student_G.zero_grad(set_to_none=True)
    dcd = rec.dcd_loss(rec.forward(nets["batch"]))
    dcd.backward()  # the DCD term alone reaches the student G and its connectors
    for net in (rec.student_G, rec.s_conn):
        assert sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in rec.t_conn.parameters())
    rec.student_G.zero_grad(set_to_none=True)
    rec.s_conn.zero_grad(set_to_none=True)
    # the teacher D learns real B vs the teacher's outputs (not the student's)
    out = rec.forward(nets["batch"])
    d_loss, d_logs = rec.extra_loss("teacher_D", out)
    with torch.no_grad():
        expected = rec.gan(rec.D_T(torch.cat([out["A"], out["teacher_fake"]], 1)), False)
    assert float(d_logs["DT_fake"]) == pytest.approx(float(expected), rel=1e-5)
    teacher_D_before = [p.clone() for p in rec.D_T.parameters()]
    history = student_D_untouched(rec, nets["D"], nets["batch"], steps=12)
    falls(history, "G_style", "G_feature")
    assert all(h["G_dcd"] > 0 for h in history)
    assert any(not torch.equal(a, b) for a, b in zip(teacher_D_before, rec.D_T.parameters()))  # co-trained
    assert not any(p.requires_grad for p in nets["TD"].parameters())  # the caller's teacher is untouched
    _, logs = make(nets, "dcd", lambda_teacher_gan=1.0).generator_loss(out)
    terms_finite_and_nonzero(logs, ["G_adv_teacher_d"])
    assert make(nets, "dcd", online=False).extra_optimizers(1e-3, 0.5) == {}


def test_omgd(nets):
    rec = make(nets, "omgd")
    assert not rec.trains_student_D and set(rec.extra_optimizers(1e-3, 0.5)) == {"teacher_D", "teacher_G"}
    out = rec.forward(nets["batch"])
    loss, logs = rec.generator_loss(out)
    terms_finite_and_nonzero(logs, ["G_ssim", "G_style", "G_feature", "G_tv", "G_cd"])
    assert "G_adv" not in logs
    o, terms = rec.options, ("ssim", "style", "feature", "tv", "cd")
    assert [o[f"lambda_{k}"] for k in terms] == [10, 1e4, 10, 1e-5, 10]  # the released pix2pix weights
    expected = sum(o[f"lambda_{k}"] * float(logs[f"G_{k}"]) for k in terms)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    fake = out["fake"].detach()
    assert float(logs["G_tv"]) == pytest.approx(float((fake[..., 1:] - fake[..., :-1]).abs().sum()
                                                       + (fake[..., 1:, :] - fake[..., :-1, :]).abs().sum()), rel=1e-5)
    # the student gets no GAN gradient: no D phase, no student-D forward, D's weights unchanged
    history = student_D_untouched(rec, nets["D"], nets["batch"], steps=12)
    falls(history, "loss_G")
    assert any(h["GT_L1"] > 0 for h in history)  # the online teacher trains alongside
    # with student_gan the D phase and the GAN term come back
    rec = make(nets, "omgd", student_gan=True, online=False)
    assert rec.trains_student_D and rec.extra_optimizers(1e-3, 0.5) == {}
    D_before = copy.deepcopy(rec.student_D)
    history = train(rec, nets["batch"], 2)
    assert all(np.isfinite(h["G_adv"]) for h in history)
    assert any(not torch.equal(a, b) for a, b in zip(D_before.parameters(), rec.student_D.parameters()))
    with pytest.raises(UserError, match="online teacher trains on paired"):
        make(nets, "omgd", paired=False)
    make(nets, "omgd", paired=False, online=False)
    with pytest.raises(UserError, match="feature_stages"):
        make(nets, "omgd", feature_stages=1)


def test_omgd_feature_size_resizes(nets):
    """feature_size resizes before the feature network: the stage maps grow with it."""
    from ganprune.metrics.fid_inception import InceptionStages
    x = nets["batch"]["A"]
    native, resized = InceptionStages(2)(x), InceptionStages(2, size=96)(x)
    assert [f.shape[1] for f in native] == [64, 192] and resized[0].shape[-1] > native[0].shape[-1]
    with pytest.raises(UserError, match="too small"):
        InceptionStages(4)(x[..., :32, :32])


def test_output_l1_control(nets):
    rec = make(nets, "output_l1", paired=False)
    out = rec.forward(nets["batch"])
    loss, logs = rec.generator_loss(out)
    with torch.no_grad():
        expected = (out["fake"] - nets["TG"](nets["batch"]["A"])).abs().mean()
    assert float(logs["G_L1_teacher"]) == pytest.approx(float(expected), rel=1e-5)
    history = student_D_untouched(rec, nets["D"], nets["batch"], steps=12)
    falls(history, "G_L1_teacher")


def test_gcc(nets):
    rec = make(nets, "gcc")
    history = train(rec, nets["batch"], 16)
    falls(history, "G_distill")
    assert all(h["G_feature"] > 0 and h["G_gram"] > 0 for h in history)
    assert rec.ema_delta_t is not None and rec.ema_delta_t >= 0
    assert all(p.grad is not None for p in rec.gates.parameters())  # the gates phase moved α
    assert all(0 <= float(a.detach().min()) and float(a.detach().max()) <= 1 for a in rec.gates.alphas)
    assert 0 < history[-1]["D_gates_on"] <= 1
    # a gate below ½ switches its channel off in every D forward
    D, x = rec.student_D.eval(), torch.cat([nets["batch"]["A"], nets["batch"]["B"]], 1)
    with torch.no_grad():
        before = D(x)
        rec.gates.alphas[0].fill_(0.2)
        assert not torch.allclose(D(x), before)
        rec.close()  # hooks removed: the caller's D is a plain D again
        rec.gates.alphas[0].fill_(1.0)
        plain = D(x)
        rec.gates.alphas[0].fill_(0.2)
        assert torch.equal(D(x), plain)
    with pytest.raises(UserError, match="needs paired"):
        make(nets, "gcc", paired=False)
    assert make(nets, "gcc").gan.mode == "vanilla"  # as ganprune's teachers are trained


def test_gcc_warmup_and_ema(nets):
    rec = make(nets, "gcc", adapter_warmup=0.5)
    seen = []
    rec.adapters[0].register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].requires_grad))
    history = train(rec, nets["batch"], 4)
    assert seen == [False, False, True, True]  # adapters alone learn from the G-feature terms at first
    terms_finite_and_nonzero(history[-1], ["G_feature", "G_gram", "G_adv", "G_L1", "GT_adv", "GT_L1"])
    # the EMA of the teacher pair's balance: follows the new value at the start, frozen at the end
    rec.ema_delta_t, rec._teacher_fake_d = 5.0, torch.tensor(0.0)
    out = rec.forward(nets["batch"])
    rec.step, rec.steps = 0, 10
    _, logs = rec.extra_loss("teacher_G", out)
    assert rec.ema_delta_t == pytest.approx(abs(float(logs["GT_adv"])))
    rec.ema_delta_t, rec.step = 5.0, 10
    rec.extra_loss("teacher_G", rec.forward(nets["batch"]))
    assert rec.ema_delta_t == pytest.approx(5.0)


def test_selfsup(nets):
    dense_D = copy.deepcopy(nets["TD"]).requires_grad_(True)
    rec = make(nets, "selfsup", student_G=prune(nets["TG"], {}, torch.zeros(1, 3, 64, 64)), student_D=dense_D)
    history = train(rec, nets["batch"], 16)
    falls(history, "G_adv_gap", "G_L1_gap")
    assert history[0]["G_adv_gap"] < 0.05 and history[0]["G_L1_gap"] < 0.05  # starts from the dense weights
    with pytest.raises(UserError, match="pass a copy of the teacher D"):
        make(nets, "selfsup")
    with pytest.raises(UserError, match="sparsity"):
        make(nets, "selfsup", student_D=dense_D, sparsity=1.0)


def test_selfsup_sparsity_schedule(nets):
    from ganprune.train.recipes.selfsup import sparsity_at
    assert sparsity_at(0, 100, 0.9) == pytest.approx(0.05) and sparsity_at(50, 100, 0.9) == pytest.approx(0.9)
    assert sparsity_at(25, 100, 0.9) == pytest.approx(0.9 - 0.85 / 8)
    dense_G = copy.deepcopy(nets["TG"]).requires_grad_(True)
    rec = make(nets, "selfsup", student_G=dense_G, student_D=copy.deepcopy(nets["TD"]), sparsity=0.5)
    history = train(rec, nets["batch"], 8)
    levels = [h["G_sparsity"] for h in history]
    assert levels == sorted(levels)
    assert levels[0] == pytest.approx(sparsity_at(1, 8, 0.5), abs=0.01)  # masks follow the schedule
    assert levels[-1] == pytest.approx(0.5, abs=0.01)  # reached by half of training and kept
    w = rec.convs[1].weight
    assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.02)


def test_cyclegan(nets):
    rec = make(nets, "cyclegan", paired=False)
    history = train(rec, nets["batch"], 16, lr=1e-3)
    falls(history, "G_rec", "G_idt")
    out = rec.forward(nets["batch"])
    _, logs = rec.generator_loss(out)
    with torch.no_grad():
        expected = (out["fake"] - nets["TG"](nets["batch"]["A"])).abs().mean()
    assert float(logs["G_rec"]) == pytest.approx(float(expected), rel=1e-5)  # the teacher is the target


def test_template_is_a_working_recipe(nets):
    import ganprune.train.recipes.template  # noqa: F401  (registers "template")
    history = train(make(nets, "template"), nets["batch"], 12, lr=1e-3)
    falls(history, "G_distill")


def test_perceptual_network_backpropagates_after_an_evaluation_loaded_it():
    """The evaluation loads the shared FID network under torch.inference_mode; the perceptual losses of omgd/dcd
    back-propagate through the same network afterwards (inference tensors would refuse)."""
    from ganprune.metrics import fid_inception
    fid_inception._cache.clear()
    with torch.inference_mode():
        fid_inception.load_fid_inception()
    x = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_()
    feats = fid_inception.InceptionStages(4, 0)(x)
    sum(f.mean() for f in feats).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
