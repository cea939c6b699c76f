"""DPO and SimPO losses pinned to values worked out by hand with math.log / math.exp."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from pobench.algorithm import SeqLogps
from pobench.losses import dpo_loss, simpo_loss
from pobench.registry import algorithm_defaults, get_algorithm


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x)"""
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# Pair 1: policy (-10, -12), reference (-11, -11.5): log-ratios +1 and -0.5, h = 1.5
# Pair 2: policy (-20, -15), reference (-18, -16): log-ratios -2 and +1,  h = -3
# Pair 3: policy (-5, -40),  reference (-6, -20):  log-ratios +1 and -20, h = 21
PC, PR, RC, RR = t(-10, -20, -5), t(-12, -15, -40), t(-11, -18, -6), t(-11.5, -16, -20)
H = [1.5, -3.0, 21.0]
BETA = 0.1


def approx(values):
    return pytest.approx(values, rel=1e-12, abs=1e-12)


def test_dpo_sigmoid_by_hand():
    losses, chosen, rejected = dpo_loss(PC, PR, RC, RR, BETA)
    assert losses.tolist() == approx([math.log(1 + math.exp(-0.15)), math.log(1 + math.exp(0.3)),
                                      math.log(1 + math.exp(-2.1))])
    assert chosen.tolist() == approx([0.1, -0.2, 0.1])
    assert rejected.tolist() == approx([-0.05, 0.1, -2.0])


def test_dpo_label_smoothing_by_hand():
    eps = 0.2
    losses, _, _ = dpo_loss(PC, PR, RC, RR, BETA, label_smoothing=eps)
    expected = [(1 - eps) * softplus(-BETA * h) + eps * softplus(BETA * h) for h in H]
    assert losses.tolist() == approx(expected)
    assert expected[0] == approx(0.8 * math.log(1 + math.exp(-0.15)) + 0.2 * math.log(1 + math.exp(0.15)))
    # eps = 0.5 makes the loss symmetric in chosen and rejected
    swapped, _, _ = dpo_loss(PR, PC, RR, RC, BETA, label_smoothing=0.5)
    assert swapped.tolist() == approx(dpo_loss(PC, PR, RC, RR, BETA, label_smoothing=0.5)[0].tolist())


def test_dpo_ipo_by_hand():
    losses, _, _ = dpo_loss(PC, PR, RC, RR, BETA, loss_type="ipo")
    # (h - 1/(2 beta))^2 with 1/(2*0.1) = 5
    assert losses.tolist() == approx([(1.5 - 5) ** 2, (-3 - 5) ** 2, (21 - 5) ** 2])
    assert losses.tolist() == approx([12.25, 64.0, 256.0])


def test_dpo_hinge_by_hand():
    losses, _, _ = dpo_loss(PC, PR, RC, RR, BETA, loss_type="hinge")
    assert losses.tolist() == approx([0.85, 1.3, 0.0])   # relu(1 - beta h): the third pair is past the margin


def test_dpo_unknown_loss_type():
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(PC, PR, RC, RR, BETA, loss_type="sigmoid_norm")


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 3.0])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_dpo_at_the_reference_is_log2(beta, eps):
    logps = t(-3.0, -250.5, -0.001, -77.0)
    other = t(-9.0, -1.0, -12.25, -77.0)
    losses, chosen, rejected = dpo_loss(logps, other, logps.clone(), other.clone(), beta, label_smoothing=eps)
    assert losses.tolist() == [math.log(2)] * 4
    assert chosen.tolist() == [0.0] * 4 and rejected.tolist() == [0.0] * 4
    # the other variants at h = 0
    assert dpo_loss(logps, other, logps, other, beta, loss_type="ipo")[0].tolist() == approx([(1 / (2 * beta)) ** 2] * 4)
    assert dpo_loss(logps, other, logps, other, beta, loss_type="hinge")[0].tolist() == [1.0] * 4


def test_dpo_gradients_have_the_right_sign_and_size():
    pc, pr = PC.clone().requires_grad_(True), PR.clone().requires_grad_(True)
    losses, chosen, rejected = dpo_loss(pc, pr, RC, RR, BETA)
    assert not chosen.requires_grad and not rejected.requires_grad      # rewards are detached
    losses.sum().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()                  # more chosen logp -> lower loss
    # dL/d logpi(y_w) = -beta * sigmoid(-beta h)
    assert pc.grad.tolist() == approx([-BETA * sigmoid(-BETA * h) for h in H])
    assert pr.grad.tolist() == approx([BETA * sigmoid(-BETA * h) for h in H])
    # and a finite step the same way
    step = dpo_loss(PC + 0.5, PR, RC, RR, BETA)[0]
    assert (step < losses.detach()).all()
    step = dpo_loss(PC, PR + 0.5, RC, RR, BETA)[0]
    assert (step > losses.detach()).all()


def test_dpo_loss_rises_as_the_reference_rates_the_chosen_answer_higher():
    rc = RC.clone().requires_grad_(True)
    dpo_loss(PC, PR, rc, RR, BETA)[0].sum().backward()
    assert (rc.grad > 0).all()   # a better reference on the chosen answer means less implicit reward


# -- SimPO ----------------------------------------------------------------------------------------------------

# Pair 1: chosen -20 over 10 tokens (-2 per token), rejected -36 over 12 tokens (-3 per token)
# Pair 2: chosen -9 over 3 tokens (-3), rejected -8 over 4 tokens (-2)
SC, SR, NC, NR = t(-20, -9), t(-36, -8), t(10, 3), t(12, 4)
D = [1.0, -1.0]   # per-token margins


def test_simpo_sigmoid_by_hand():
    beta, ratio = 2.0, 0.5               # gamma = ratio * beta = 1.0
    losses, chosen, rejected = simpo_loss(SC, SR, NC, NR, beta, ratio)
    # z = beta * margin - gamma: 2 - 1 = 1 and -2 - 1 = -3
    assert losses.tolist() == approx([math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(3.0))])
    assert chosen.tolist() == approx([-4.0, -6.0])            # beta / |y| * log pi(y)
    assert rejected.tolist() == approx([-6.0, -4.0])


def test_simpo_gamma_is_ratio_times_beta():
    beta, ratio = 2.5, 0.4               # gamma = 1.0
    # a per-token margin of gamma / beta = 0.4 sits exactly at the target margin: loss log 2
    losses, _, _ = simpo_loss(t(-4.0), t(-8.8), t(10), t(11), beta, ratio)   # -0.4 - (-0.8) = 0.4
    assert losses.tolist() == approx([math.log(2)])
    # not gamma = ratio (which would give log(1 + e^-0.6)), nor gamma = ratio / beta
    assert losses.item() != pytest.approx(math.log(1 + math.exp(-(1.0 - 0.4))))
    for beta, ratio in [(1.0, 0.0), (2.0, 0.5), (10.0, 0.3), (0.5, 1.6)]:
        losses, _, _ = simpo_loss(SC, SR, NC, NR, beta, ratio)
        assert losses.tolist() == approx([softplus(-(beta * d - ratio * beta)) for d in D])


def test_simpo_label_smoothing_and_hinge_by_hand():
    beta, ratio, eps = 2.0, 0.5, 0.1
    losses, _, _ = simpo_loss(SC, SR, NC, NR, beta, ratio, label_smoothing=eps)
    z = [1.0, -3.0]
    assert losses.tolist() == approx([(1 - eps) * softplus(-x) + eps * softplus(x) for x in z])
    losses, _, _ = simpo_loss(SC, SR, NC, NR, beta, ratio, loss_type="hinge")
    assert losses.tolist() == approx([0.0, 4.0])   # relu(1 - z)
    with pytest.raises(ValueError, match="loss_type"):
        simpo_loss(SC, SR, NC, NR, beta, ratio, loss_type="ipo")


def test_simpo_length_normalisation():
    # the same per-token log-probs at twice the length give the same loss
    a = simpo_loss(SC, SR, NC, NR, 2.0, 0.5)[0]
    b = simpo_loss(2 * SC, 2 * SR, 2 * NC, 2 * NR, 2.0, 0.5)[0]
    assert a.tolist() == approx(b.tolist())
    # integer token counts work too
    c = simpo_loss(SC, SR, NC.long(), NR.long(), 2.0, 0.5)[0]
    assert a.tolist() == approx(c.tolist())


def test_simpo_gradients():
    sc, sr = SC.clone().requires_grad_(True), SR.clone().requires_grad_(True)
    losses, chosen, rejected = simpo_loss(sc, sr, NC, NR, 2.0, 0.5)
    assert not chosen.requires_grad and not rejected.requires_grad
    losses.sum().backward()
    assert (sc.grad < 0).all() and (sr.grad > 0).all()
    # dL/d logpi(y_w) = -(beta / |y_w|) sigmoid(-z)
    z = [1.0, -3.0]
    assert sc.grad.tolist() == approx([-(2.0 / n) * sigmoid(-x) for n, x in zip([10, 3], z)])
    assert sr.grad.tolist() == approx([(2.0 / n) * sigmoid(-x) for n, x in zip([12, 4], z)])


# -- the registered algorithms --------------------------------------------------------------------------------

def _params(algo, **over):
    return SimpleNamespace(**{**algorithm_defaults(algo), **over})


@pytest.mark.parametrize("over", [{}, {"label_smoothing": 0.2}, {"loss_type": "ipo"}, {"loss_type": "hinge"},
                                  {"beta": 0.5}])
def test_dpo_algorithm_matches_the_function(over):
    algo = get_algorithm("dpo")
    assert algo.needs_reference and algo.sampler == "dataset_pair"
    cfg = _params(algo, **over)
    out = algo.loss(SeqLogps(PC, PR, t(5, 5, 5), t(6, 6, 6)), SeqLogps(RC, RR, t(5, 5, 5), t(6, 6, 6)), cfg)
    losses, chosen, rejected = dpo_loss(PC, PR, RC, RR, cfg.beta, cfg.label_smoothing, cfg.loss_type)
    assert out.losses.tolist() == losses.tolist()
    assert out.chosen_rewards.tolist() == chosen.tolist() and out.rejected_rewards.tolist() == rejected.tolist()
    if not over:
        assert out.losses.tolist() == approx([softplus(-BETA * h) for h in H])   # defaults: beta 0.1, sigmoid


@pytest.mark.parametrize("over", [{}, {"gamma_beta_ratio": 0.0}, {"label_smoothing": 0.1}, {"loss_type": "hinge"}])
def test_simpo_algorithm_matches_the_function(over):
    algo = get_algorithm("simpo")
    assert not algo.needs_reference
    cfg = _params(algo, **over)
    out = algo.loss(SeqLogps(SC, SR, NC, NR), None, cfg)
    losses, chosen, rejected = simpo_loss(SC, SR, NC, NR, cfg.beta, cfg.gamma_beta_ratio, cfg.label_smoothing,
                                          cfg.loss_type)
    assert out.losses.tolist() == losses.tolist()
    assert out.chosen_rewards.tolist() == chosen.tolist() and out.rejected_rewards.tolist() == rejected.tolist()
    if not over:   # defaults beta 2.0, ratio 0.5
        assert out.losses.tolist() == approx([math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(3.0))])


def test_ranking_nce_is_dpo_with_one_negative_and_a_softmax_with_several():
    from pobench.losses import dpo_loss, ranking_nce_loss
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g) for _ in range(4))
    one, _, _ = ranking_nce_loss(pc, pr, rc, rr, 0.3)
    assert torch.allclose(one, dpo_loss(pc, pr, rc, rr, 0.3)[0], atol=1e-6)
    # two records with 3 and 3 drawn negatives; the chosen is repeated on its record's rows
    pc = torch.tensor([1.0, 1.0, 1.0, -2.0, -2.0, -2.0])
    rc = torch.zeros(6)
    pr = torch.tensor([0.0, 2.0, -1.0, -2.0, -4.0, -3.0])
    rr = torch.zeros(6)
    group = torch.tensor([5, 5, 5, 9, 9, 9])
    losses, _, _ = ranking_nce_loss(pc, pr, rc, rr, 0.5, group)
    want0 = -0.5 + math.log(math.exp(0.5) + math.exp(0.0) + math.exp(1.0) + math.exp(-0.5))
    want1 = 1.0 + math.log(math.exp(-1.0) + math.exp(-1.0) + math.exp(-2.0) + math.exp(-1.5))
    assert losses.tolist() == pytest.approx([want0] * 3 + [want1] * 3, rel=1e-6)
