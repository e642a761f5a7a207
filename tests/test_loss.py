"""The GRPO loss piece by piece, against values worked out by hand or by a naive reference written here.

What is checked, and against what:
- `group_advantages`: hand values, with and without the (population) std division.
- `token_weights` + `grpo_loss`: the four aggregation modes on three sequences of known per-token losses, as whole
  batches and split into micro-batches (the micro-batch losses must add up to the whole-batch loss).
- The clipped surrogate: hand-made ratios around 1 - eps_low and 1 + eps_high (eps_low != eps_high) for positive and
  negative advantages: each token's loss, which tokens get zero gradient, and the clip_pos / clip_neg counts.
- `kl_term`: each sampled term and logged value against its formula on three tokens; the log-ratio bound (clamped
  value, saturated gradient, counted) and the share of the exact restoring pull each term keeps on a collapsing way
  past it (float64); >= 0 on random float32 inputs and 0 where the policies agree. And the one property
  that makes a KL choice what its name says: its expected gradient over tokens sampled from pi equals the gradient
  of the named KL (float64, 1e-10, through `token_stats` + `grpo_loss`, phi = 1 and phi < 1).
- `token_stats`: entropy and log-probabilities by hand on 3-token vocabularies (temperature included); the exact
  forward KL against a naive softmax reference (RAPO's reweighting included); its gradient against the closed form;
  chunked against unchunked and naive (values and gradients, 1e-5).
- The real vLLM engine sampling at T=0.6 returns the log-probabilities the trainer computes at T=0.6.
- `python grpo.py --help` documents every Config field, and names the paper behind each loss option.
"""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import data
import grpo

ROOT = Path(__file__).resolve().parents[1]
LN2, LN3, LN6 = math.log(2), math.log(3), math.log(6)


# ----------------------------------------------------------------------------------------------------------------
# Advantages


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 4.0, 4.0, 2.0]])
    # Group 1: mean 1/4, so A = r - 1/4. Group 2: mean 3, so A = r - 3.
    expected = torch.tensor([[0.75, -0.25, -0.25, -0.25], [-1.0, 1.0, 1.0, -1.0]])
    torch.testing.assert_close(grpo.group_advantages(rewards, std_norm=False, eps=1e-6), expected)
    # Population std: group 1 sqrt(3/16) = sqrt(3)/4, so 0.75 -> sqrt(3) and -0.25 -> -1/sqrt(3); group 2: std 1.
    # (The sample std, /(G-1), would give 1/2 and 2/sqrt(3) instead.)
    s3 = math.sqrt(3)
    expected_std = torch.tensor([[s3, -1 / s3, -1 / s3, -1 / s3], [-1.0, 1.0, 1.0, -1.0]])
    torch.testing.assert_close(grpo.group_advantages(rewards, std_norm=True, eps=1e-6), expected_std)
    # eps is added to the std: (r - mean) / (1 + 0.1) for group 2.
    torch.testing.assert_close(grpo.group_advantages(rewards, std_norm=True, eps=0.1)[1], expected[1] / 1.1)


# ----------------------------------------------------------------------------------------------------------------
# Aggregation modes (token_weights + grpo_loss), including micro-batches

# Three sequences with completion lengths 1, 3, 2 and per-token losses L = [2 | 1, 3, 5 | 4, 6]
# (sums 2, 9, 10; 21 in all over 6 tokens), with max_new_tokens = 4. By hand:
SEQ_LENS = [1, 3, 2]
TOKEN_LOSSES = [2.0, 1.0, 3.0, 5.0, 4.0, 6.0]
MAX_LEN = 4
EXPECTED_LOSS = {
    "token-mean": 21 / 6,  # DAPO: all tokens of the step weigh the same
    "seq-mean-token-mean": (2 / 1 + 9 / 3 + 10 / 2) / 3,  # GRPO: mean over sequences of each one's token mean
    "seq-mean-token-sum-norm": 21 / (3 * 4),  # Dr.GRPO: sum / (sequences x max_new_tokens)
    "sum": 21 / 3,  # POPE authors (PipelineRL): sum / sequences per step
}


def on_policy_loss(token_losses, seq_lens, mode, n_seqs, n_tokens):
    """grpo_loss on-policy (ratio exactly 1), so each token's loss is -A_t: choose A_t = -L_t."""
    losses = torch.tensor(token_losses, dtype=torch.float64)
    logp = torch.zeros(len(losses), dtype=torch.float64, requires_grad=True)
    weights = grpo.token_weights(torch.tensor(seq_lens), mode, n_seqs, n_tokens, MAX_LEN).double()
    loss, _ = grpo.grpo_loss(logp, logp.detach(), -losses, weights, eps_low=0.2, eps_high=0.2)
    return loss


@pytest.mark.parametrize("mode", list(EXPECTED_LOSS))
def test_aggregation_modes_match_their_formulas(mode):
    loss = on_policy_loss(TOKEN_LOSSES, SEQ_LENS, mode, n_seqs=3, n_tokens=6)
    assert loss.item() == pytest.approx(EXPECTED_LOSS[mode], rel=1e-6)


@pytest.mark.parametrize("mode", list(EXPECTED_LOSS))
@pytest.mark.parametrize("split", [[1, 2], [2, 1], [1, 1, 1]])  # sequences per micro-batch
def test_micro_batch_losses_add_up_to_the_step_loss(mode, split):
    """Each micro-batch weighs its tokens with the counts of the WHOLE step (3 sequences, 6 tokens)."""
    total, first_seq = 0.0, 0
    for n in split:
        lens = SEQ_LENS[first_seq:first_seq + n]
        first_tok = sum(SEQ_LENS[:first_seq])
        losses = TOKEN_LOSSES[first_tok:first_tok + sum(lens)]
        total += on_policy_loss(losses, lens, mode, n_seqs=3, n_tokens=6).item()
        first_seq += n
    assert total == pytest.approx(EXPECTED_LOSS[mode], rel=1e-6)


def test_token_weights_by_hand():
    lens = torch.tensor([1, 3])
    w = {mode: grpo.token_weights(lens, mode, n_seqs=4, n_tokens=10, max_len=8).tolist()
         for mode in EXPECTED_LOSS}
    assert w["token-mean"] == pytest.approx([1 / 10] * 4)
    assert w["seq-mean-token-mean"] == pytest.approx([1 / 4, 1 / 12, 1 / 12, 1 / 12])
    assert w["seq-mean-token-sum-norm"] == pytest.approx([1 / 32] * 4)
    assert w["sum"] == pytest.approx([1 / 4] * 4)


# ----------------------------------------------------------------------------------------------------------------
# The clipped surrogate

# eps_low = 0.2, eps_high = 0.28: the ratio is clipped to [0.8, 1.28].
#            A = +1: ratio 0.7 (below the range, but A > 0: NOT clipped, the pessimistic min keeps 0.7), 1.0, 1.27
#                    (inside: it would be clipped with a symmetric eps_high = 0.2), 1.3 and 1.5 (clipped at 1.28);
#            A = -2: ratio 0.7 and 0.79 (clipped at 0.8: -2 * 0.8 = -1.6 is the min), 0.85 (inside), 1.3 (above the
#                    range, but A < 0: NOT clipped, min(-2.6, -2.56) = -2.6);
#            A =  0: ratio 1.5 (no loss, counted in neither sign).
CLIP_RATIOS = [0.7, 1.0, 1.27, 1.3, 1.5, 0.7, 0.79, 0.85, 1.3, 1.5]
CLIP_ADV = [1.0, 1.0, 1.0, 1.0, 1.0, -2.0, -2.0, -2.0, -2.0, 0.0]
CLIP_LOSS = [-0.7, -1.0, -1.27, -1.28, -1.28, 1.6, 1.6, 1.7, 2.6, 0.0]  # -min(rho A, clip(rho) A)
CLIP_GRAD = [-0.7, -1.0, -1.27, 0.0, 0.0, 0.0, 0.0, 1.7, 2.6, 0.0]  # d L / d log pi = -A rho, or 0 where clipped


def clip_case(eps_high=0.28, weights=None):
    logp = torch.tensor(CLIP_RATIOS, dtype=torch.float64).log().requires_grad_()
    old = torch.zeros_like(logp)
    adv = torch.tensor(CLIP_ADV, dtype=torch.float64)
    weights = torch.ones_like(old) if weights is None else weights
    loss, metrics = grpo.grpo_loss(logp, old, adv, weights, eps_low=0.2, eps_high=eps_high)
    return logp, loss, metrics


def test_clip_token_losses_and_which_tokens_are_clipped():
    for t, expected in enumerate(CLIP_LOSS):  # one token at a time: weight 1 on token t, 0 elsewhere
        _, loss, _ = clip_case(weights=torch.eye(len(CLIP_LOSS), dtype=torch.float64)[t])
        assert loss.item() == pytest.approx(expected, abs=1e-9), f"token {t}"
    logp, loss, metrics = clip_case()
    assert loss.item() == pytest.approx(sum(CLIP_LOSS), abs=1e-9)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor(CLIP_GRAD, dtype=torch.float64))
    assert (logp.grad == 0).tolist() == [False, False, False, True, True, True, True, False, False, True]
    assert metrics == {"clip_pos": 2, "n_pos": 5, "clip_neg": 2, "n_neg": 4}


def test_kl_cov_penalises_exactly_the_top_covariance_tokens():
    """KL-Cov: with ratio 0.2 of 10 tokens, the 2 tokens of largest (logp - mean)(A - mean) get
    coef * |logp - old|, whose gradient is coef * sign(logp - old); every other token's gradient is unchanged."""
    logp0 = torch.tensor([-0.1, -3.0, -0.2, -2.5, -1.0, -0.3, -4.0, -1.5, -0.7, -2.0], dtype=torch.float64)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 0.0, 1.0, -1.0, 0.5, -0.5, 0.0], dtype=torch.float64)
    old = logp0 + torch.tensor([0.1, -0.1] * 5, dtype=torch.float64)  # rho = e^-+0.1: inside the clip everywhere
    grads = []
    for ratio in (0.0, 0.2):
        logp = logp0.clone().requires_grad_()
        loss, _ = grpo.grpo_loss(logp, old, adv, torch.ones(10, dtype=torch.float64), eps_low=0.2, eps_high=0.2,
                                 kl_cov_ratio=ratio, kl_cov_coef=0.5)
        loss.backward()
        grads.append(logp.grad)
    cov = (logp0 - logp0.mean()) * (adv - adv.mean())
    top = set(cov.topk(2).indices.tolist())
    assert top == {6, 0}  # a confident token pushed up (0), an unlikely one pushed down (6)
    for t in range(10):
        extra = 0.5 * torch.sign(logp0[t] - old[t]).item() if t in top else 0.0
        assert (grads[1][t] - grads[0][t]).item() == pytest.approx(extra, abs=1e-12), t


def test_clip_higher_is_what_leaves_ratio_1_27_unclipped():
    logp, loss, metrics = clip_case(eps_high=0.2)  # symmetric: 1.27 is now above 1.2 and clipped
    loss.backward()
    assert metrics["clip_pos"] == 3 and metrics["clip_neg"] == 2
    assert logp.grad[2] == 0
    assert loss.item() == pytest.approx(sum(CLIP_LOSS) + (1.27 - 1.2) + 2 * (1.28 - 1.2), abs=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# KL terms: values by hand, and the expected gradient of each choice against the true KL's gradient

# log pi = [-1, -2, -0.5], log ref = [-1.5, -1, -0.5]  ->  log u = log ref - log pi = [-0.5, 1, 0], u = ref / pi.
KL_LOGP = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64)
KL_REF = torch.tensor([-1.5, -1.0, -0.5], dtype=torch.float64)
E = math.e
K2 = [0.125, 0.5, 0.0]  # (log u)^2 / 2
K3 = [E**-0.5 - 1 + 0.5, E - 1 - 1, 0.0]  # u - 1 - log u = [0.106531, 0.718282, 0]
KFWD = [-0.5 * E**-0.5 - E**-0.5 + 1, E - E + 1, 0.0]  # u log u - u + 1 = [0.090204, 1, 0]
KL_EXPECTED = {"reverse-k2": (K2, K3), "forward-k3": (K3, KFWD)}  # (loss term, logged value)


@pytest.mark.parametrize("kind", list(KL_EXPECTED))
def test_sampled_kl_terms_by_hand(kind):
    loss_t, value_t = grpo.kl_term(KL_LOGP, KL_REF, kind, clamp=5.0)
    torch.testing.assert_close(loss_t, torch.tensor(KL_EXPECTED[kind][0], dtype=torch.float64))
    torch.testing.assert_close(value_t, torch.tensor(KL_EXPECTED[kind][1], dtype=torch.float64))


def test_kl_log_ratio_bound_clamps_the_value_and_saturates_the_gradient():
    """log u = -30 and +30: the loss terms take log u clamped to -+5, but the gradient passes straight through, so each
    token's coefficient on grad log pi saturates at the bound instead of vanishing: d k2 / d logp = -clamp(log u) and
    d k3 / d logp = 1 - e^clamp(log u). The logged values use the raw ratio (they are estimates, not losses)."""
    logp = torch.tensor([0.0, -30.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-30.0, 0.0], dtype=torch.float64)
    k3, value = grpo.kl_term(logp, ref, "forward-k3", clamp=5.0)
    torch.testing.assert_close(k3, torch.tensor([E**-5 - 1 + 5, E**5 - 1 - 5], dtype=torch.float64))
    assert value[1].item() == pytest.approx(30 * E**30 - E**30 + 1)
    torch.testing.assert_close(torch.autograd.grad(k3.sum(), logp)[0],
                               torch.tensor([1 - E**-5, 1 - E**5], dtype=torch.float64))
    k2, value = grpo.kl_term(logp, ref, "reverse-k2", clamp=5.0)
    assert k2.tolist() == [12.5, 12.5] and value[0].item() == pytest.approx(E**-30 - 1 + 30)
    assert torch.autograd.grad(k2.sum(), logp)[0].tolist() == [5.0, -5.0]
    # Through the loss: the tokens past the bound are counted.
    _, metrics = grpo.grpo_loss(logp, logp.detach(), torch.zeros(2, dtype=torch.float64), torch.ones(2),
                                eps_low=0.2, eps_high=0.2, ref_logp=ref, kl="forward-k3", kl_coef=1.0, kl_clamp=5.0)
    assert metrics["kl_clamped"] == 2


def expected_pull(ref_rare: float, pi_rare: float, kind: str, clamp: float) -> tuple[float, float]:
    """(sum_a pi(a) d loss_t(a) / d z_rare, d KL / d z_rare) over 4 tokens, in float64: the expected gradient of a
    sampled KL term on a rare way's logit, and the exact one of the KL it is named for. The rare way has ref_rare
    under the reference and pi_rare under the policy; the other three tokens share the rest evenly."""
    ref = torch.tensor([ref_rare] + [(1 - ref_rare) / 3] * 3, dtype=torch.float64).log()  # [4]
    z = torch.tensor([pi_rare] + [(1 - pi_rare) / 3] * 3, dtype=torch.float64).log().requires_grad_()  # [4] logits
    expected = 0.0
    for a in range(4):
        logp_all = torch.log_softmax(z, -1)  # [4] a fresh graph per sampled token
        loss_t, _ = grpo.kl_term(logp_all[a:a + 1], ref[a:a + 1], kind, clamp=clamp)
        expected += logp_all[a].exp().item() * torch.autograd.grad(loss_t.sum(), z)[0][0].item()
    exact = torch.autograd.grad(true_kl(torch.log_softmax(z, -1), ref, kind.split("-")[0]), z)[0][0].item()
    return expected, exact


# The collapse RAPO is about: a way the reference gives 13% (5%) that the policy has sharpened down to 0.05% (0.01%),
# so log u = 5.6 (6.2), past the bound 5. The share of the exact restoring pull each term keeps at the bound (computed
# by `expected_pull`; a clamp that zeroed the gradient kept ~0.1% for k3 and ~4% for k2).
KEPT_AT_BOUND = {("forward-k3", 0.13, 5e-4): 0.569, ("forward-k3", 0.05, 1e-4): 0.295,
                 ("reverse-k2", 0.13, 5e-4): 0.902, ("reverse-k2", 0.05, 1e-4): 0.806}


@pytest.mark.parametrize("kind,ref_rare,pi_rare", list(KEPT_AT_BOUND))
def test_sampled_kl_terms_keep_pulling_a_collapsing_way_past_the_bound(kind, ref_rare, pi_rare):
    """Past the bound the expected restoring gradient on the rare way's logit keeps its sign and a stated share of
    the exact one (k3: e^5 / u of it, roughly; k2: 5 / log u); with the bound out of reach (50) it is exact."""
    saturated, exact = expected_pull(ref_rare, pi_rare, kind, clamp=5.0)
    assert math.log(ref_rare / pi_rare) > 5.0 and exact < 0  # descent raises the rare way's logit
    assert saturated / exact == pytest.approx(KEPT_AT_BOUND[kind, ref_rare, pi_rare], abs=1e-3)
    unbounded, _ = expected_pull(ref_rare, pi_rare, kind, clamp=50.0)
    assert unbounded == pytest.approx(exact, abs=1e-12)


@pytest.mark.parametrize("kind", ["reverse-k2", "forward-k3"])
def test_sampled_kl_terms_are_nonnegative_and_zero_when_policies_agree(kind):
    """In float32, as the trainer computes them: random log-ratios from 1e-9 to 20 in size, and exact agreement."""
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(60_000, generator=g) * 20
    scale = 10.0 ** torch.randint(-9, 2, (60_000,), generator=g).float()  # many near-equal pairs: rounding
    ref = logp + scale * torch.randn(60_000, generator=g)
    for t in grpo.kl_term(logp, ref, kind, clamp=5.0):
        assert t.min().item() >= 0, f"{(t < 0).sum().item()} negative values, min {t.min().item():.2e}"
    assert all(t.abs().max().item() == 0 for t in grpo.kl_term(logp, logp.clone(), kind, clamp=5.0))


def true_kl(logp_all, ref_all, direction):
    """KL(pi || ref) or KL(ref || pi) of two log-distributions over the vocabulary (last dim)."""
    p, q = (logp_all, ref_all) if direction == "reverse" else (ref_all, logp_all)
    return (p.exp() * (p - q)).sum(-1)


def one_position(seed, V=6, H=4, T=0.7, phi=1.0):
    """A random policy and reference at one position, in float64: hidden [1, H], heads [V, H], phi [1]."""
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(1, H, generator=g, dtype=torch.float64)).requires_grad_()
    W = (torch.randn(V, H, generator=g, dtype=torch.float64)).requires_grad_()
    ref_h = torch.randn(1, H, generator=g, dtype=torch.float64)
    ref_W = torch.randn(V, H, generator=g, dtype=torch.float64)
    return h, W, ref_h, ref_W, torch.tensor([phi], dtype=torch.float64), T


CASES = [(seed, phi) for seed in range(4) for phi in (1.0, 0.5)]  # phi < 1: RAPO's reweighted reference


@pytest.mark.parametrize("kind", grpo.KL_CHOICES)
@pytest.mark.parametrize("seed,phi", CASES)
def test_kl_choice_expected_gradient_is_the_named_kl_gradient(kind, seed, phi):
    """sum_a pi(a) grad loss_t(a), the gradient the trainer follows on average (the sampling itself is not
    differentiated), equals autograd's gradient of the true KL in the named direction, in float64 to 1e-10; and
    sum_a pi(a) value_t(a) is the KL's value. Through the real path: `token_stats` on a one-position batch (policy
    hidden state and head, reference reweighted by phi, temperature 0.7), then `grpo_loss` with A = 0."""
    h, W, ref_h, ref_W, phi_t, T = one_position(seed, phi=phi)
    V = W.shape[0]
    logp_all = torch.log_softmax(h @ W.T / T, -1)[0]  # [V]
    ref_all = torch.log_softmax(phi * torch.log_softmax(ref_h @ ref_W.T / T, -1), -1)[0]  # [V], ref^phi / Z
    pi = logp_all.exp().detach()  # [V] the sampling distribution
    expected_grad = [torch.zeros_like(h), torch.zeros_like(W)]
    expected_value = 0.0
    for a in range(V):
        s = grpo.token_stats(h, W, torch.tensor([a]), T, chunk_size=1, ref_hidden=ref_h, ref_head=ref_W, ref_sharpness=phi_t)
        loss, metrics = grpo.grpo_loss(s["logp"], s["logp"].detach(), torch.zeros(1, dtype=torch.float64),
                                       torch.ones(1, dtype=torch.float64), eps_low=0.2, eps_high=0.2,
                                       ref_logp=s["ref_logp"], kl=kind, kl_coef=1.0, kl_clamp=50.0,
                                       kl_forward=s["kl_forward"], kl_reverse=s["kl_reverse"])
        for acc, g in zip(expected_grad, torch.autograd.grad(loss, (h, W))):
            acc += pi[a] * g
        expected_value += pi[a].item() * metrics["kl"]
    direction = kind.split("-")[0]
    true = true_kl(logp_all, ref_all, direction)
    for got, want in zip(expected_grad, torch.autograd.grad(true, (h, W), retain_graph=True)):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    assert expected_value == pytest.approx(true.item(), abs=1e-10)
    other = true_kl(logp_all, ref_all, "forward" if direction == "reverse" else "reverse")
    assert (torch.autograd.grad(other, h)[0] - expected_grad[0]).abs().max() > 1e-3, "the directions differ here"


def test_kl_choices_expected_gradients_on_bare_distributions():
    """The same identity on the per-token function alone, for random pi / ref over 6 tokens (logits as parameters)."""
    for seed in range(5):
        g = torch.Generator().manual_seed(100 + seed)
        z = (2 * torch.randn(6, generator=g, dtype=torch.float64)).requires_grad_()
        ref_all = torch.log_softmax(2 * torch.randn(6, generator=g, dtype=torch.float64), -1)
        for kind in grpo.KL_CHOICES:
            expected = torch.zeros(6, dtype=torch.float64)
            for a in range(6):
                logp_all = torch.log_softmax(z, -1)  # [6] a fresh graph per sampled token
                loss_t, _ = grpo.kl_term(logp_all[a:a + 1], ref_all[a:a + 1], kind, clamp=50.0,
                                         kl_forward=true_kl(logp_all, ref_all, "forward")[None],
                                         kl_reverse=true_kl(logp_all, ref_all, "reverse")[None])
                expected += logp_all[a].exp().item() * torch.autograd.grad(loss_t.sum(), z)[0]
            want = torch.autograd.grad(true_kl(torch.log_softmax(z, -1), ref_all, kind.split("-")[0]), z)[0]
            torch.testing.assert_close(expected, want, atol=1e-10, rtol=0, msg=f"{kind}, seed {seed}")


def test_grpo_loss_adds_kl_and_entropy_per_token():
    """L_t = -A_t + kl_coef KL_t - entropy_coef H_t on-policy; with kl_coef = 0 no reference is needed at all."""
    adv = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    entropy = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    clip = dict(eps_low=0.2, eps_high=0.2)
    loss, metrics = grpo.grpo_loss(KL_LOGP, KL_LOGP, adv, weights, entropy=entropy, entropy_coef=0.01,
                                   ref_logp=KL_REF, kl="reverse-k2", kl_coef=0.1, **clip)
    # per token: -A + 0.1 * [0.125, 0.5, 0] - 0.01 * [2, 1, 0] = [-1.0075, 1.04, -0.5]; logged: k3's value
    assert loss.item() == pytest.approx(0.5 * -1.0075 + 0.25 * 1.04 + 0.25 * -0.5)
    assert metrics["kl"] == pytest.approx(sum(K3)) and metrics["entropy"] == pytest.approx(3.0)
    # forward-exact takes the per-position KL from token_stats as it is: [-1, 1, -0.5] + 0.1 * [0.3, 0.2, 0.1]
    kl_forward = torch.tensor([0.3, 0.2, 0.1], dtype=torch.float64)
    loss, metrics = grpo.grpo_loss(KL_LOGP, KL_LOGP, adv, weights, ref_logp=KL_REF, kl="forward-exact", kl_coef=0.1,
                                   kl_forward=kl_forward, kl_reverse=-kl_forward, **clip)
    assert loss.item() == pytest.approx(0.5 * -0.97 + 0.25 * 1.02 + 0.25 * -0.49)
    assert metrics["kl"] == pytest.approx(0.6) and "entropy" not in metrics and metrics["kl_clamped"] == 0
    loss, metrics = grpo.grpo_loss(KL_LOGP, KL_LOGP, adv, weights, ref_logp=None, **clip)
    assert loss.item() == pytest.approx(-(0.5 - 0.25 + 0.125)) and "kl" not in metrics


# ----------------------------------------------------------------------------------------------------------------
# token_stats: entropy, temperature, exact forward KL, chunking


def stats_from_logits(logits, targets, temperature, **ref):
    """token_stats with head = identity, so that hidden = logits (H = V)."""
    eye = torch.eye(logits.shape[1], dtype=logits.dtype)
    return grpo.token_stats(logits, eye, torch.tensor(targets), temperature, chunk_size=1,
                            ref_head=eye if ref else None, **ref)


def test_entropy_and_logprobs_by_hand_with_temperature():
    # Position 1: logits [0, ln 2, 0] -> p = [1/4, 1/2, 1/4], H = 2 (1/4) ln 4 + (1/2) ln 2 = 1.5 ln 2.
    # Position 2: equal logits -> uniform, H = ln 3.
    logits = torch.tensor([[0.0, LN2, 0.0], [1.0, 1.0, 1.0]])
    s = stats_from_logits(logits, [1, 0], temperature=1.0)
    torch.testing.assert_close(s["entropy"], torch.tensor([1.5 * LN2, LN3]))
    torch.testing.assert_close(s["logp"], torch.tensor([-LN2, -LN3]))
    # T = 0.5 divides the logits by T: [0, 2 ln 2, 0] -> p = [1/6, 2/3, 1/6], H = ln 6 / 3 + (2/3) ln(3/2).
    s = stats_from_logits(logits, [0, 2], temperature=0.5)
    torch.testing.assert_close(s["entropy"], torch.tensor([LN6 / 3 + 2 / 3 * math.log(1.5), LN3]))
    torch.testing.assert_close(s["logp"], torch.tensor([-LN6, -LN3]))
    # T = 2 on [0, 2 ln 2, 0] gives back [1/4, 1/2, 1/4].
    s = stats_from_logits(2 * logits, [1, 1], temperature=2.0)
    torch.testing.assert_close(s["entropy"], torch.tensor([1.5 * LN2, LN3]))
    torch.testing.assert_close(s["logp"], torch.tensor([-LN2, -LN3]))


def naive_stats(h, W, y, T, ref_h=None, ref_W=None, phi=None):
    """The same statistics the long way, in float64: softmax, then logs; the reweighted reference as ref^phi / Z."""
    p = torch.softmax(h.double() @ W.double().T / T, dim=-1)  # [N, V]
    out = {"logp": p[torch.arange(len(y)), y].log(), "entropy": -(p * p.log()).sum(-1)}
    if ref_h is not None:
        ref = torch.softmax(ref_h.double() @ ref_W.double().T / T, dim=-1) ** phi.double()[:, None]  # [N, V]
        ref = ref / ref.sum(-1, keepdim=True)
        out["ref_logp"] = ref[torch.arange(len(y)), y].log()
        out["kl_forward"] = (ref * (ref.log() - p.log())).sum(-1)
        out["kl_reverse"] = (p * (p.log() - ref.log())).sum(-1)
    return out


def random_case(n=10, hidden=8, vocab=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g).requires_grad_()
    W = torch.randn(vocab, hidden, generator=g).requires_grad_()
    ref_h, ref_W = torch.randn(n, hidden, generator=g), torch.randn(vocab, hidden, generator=g)  # no grad, as in train
    y = torch.randint(vocab, (n,), generator=g)
    phi = 0.3 + 0.7 * torch.rand(n, generator=g)
    return h, W, y, ref_h, ref_W, phi


def test_temperature_and_forward_kl_match_a_naive_reference():
    h, W, y, ref_h, ref_W, phi = random_case()
    for T in (1.0, 0.6, 1.7):
        s = grpo.token_stats(h, W, y, T, chunk_size=4, ref_hidden=ref_h, ref_head=ref_W, ref_sharpness=phi)
        naive = naive_stats(h, W, y, T, ref_h, ref_W, phi)
        for name in ("logp", "entropy", "ref_logp", "kl_forward", "kl_reverse"):
            torch.testing.assert_close(s[name].double(), naive[name], atol=1e-5, rtol=1e-5, msg=f"{name} at T={T}")
        assert (s["kl_forward"] >= 0).all() and (s["kl_reverse"] >= 0).all()


def test_reference_reweighting_phi():
    """phi = 1 (or no phi) is the plain reference; phi = 0 is the uniform distribution, log ref = -log V."""
    h, W, y, ref_h, ref_W, _ = random_case()
    T, n, V = 0.8, len(y), W.shape[0]
    plain = grpo.token_stats(h, W, y, T, 3, ref_hidden=ref_h, ref_head=ref_W)  # ref_sharpness=None
    ones = grpo.token_stats(h, W, y, T, 3, ref_hidden=ref_h, ref_head=ref_W, ref_sharpness=torch.ones(n))
    ref_logp = torch.log_softmax(ref_h @ ref_W.T / T, -1)[torch.arange(n), y]
    torch.testing.assert_close(plain["ref_logp"], ref_logp)
    torch.testing.assert_close(ones["ref_logp"], ref_logp)
    torch.testing.assert_close(ones["kl_forward"], plain["kl_forward"])
    uniform = grpo.token_stats(h, W, y, T, 3, ref_hidden=ref_h, ref_head=ref_W, ref_sharpness=torch.zeros(n))
    torch.testing.assert_close(uniform["ref_logp"], torch.full((n,), -math.log(V)))
    logp_all = torch.log_softmax(h @ W.T / T, -1)  # KL(uniform || pi) = -log V - mean_v log pi(v)
    torch.testing.assert_close(uniform["kl_forward"], -math.log(V) - logp_all.mean(-1))


def test_forward_kl_gradient_is_minus_expected_score_under_the_reference():
    """The gradient of the exact forward KL, at each position s, against its closed form.

    w.r.t. the policy logits z (head = identity, so hidden = z), at temperature T:
        d/dz sum_v ref(v) (log ref(v) - log softmax(z / T)(v)) = (pi_theta - ref) / T.
    w.r.t. the parameters (hidden state h and output head W, logits = h W^T):
        grad KL(ref || pi_theta)(s) = -E_{v ~ ref}[grad log pi_theta(v | s)],
    where each grad log pi_theta(v | s) is computed here by autograd on a plain log_softmax, one v at a time.
    The reference is RAPO-reweighted (phi != 1) and fixed (no gradient flows into it).
    """
    T = 0.7
    h, W, y, ref_h, ref_W, phi = random_case(n=3, hidden=5, vocab=7, seed=1)
    s = grpo.token_stats(h, W, y, T, chunk_size=2, ref_hidden=ref_h, ref_head=ref_W, ref_sharpness=phi)
    ref_probs = torch.softmax(ref_h @ ref_W.T / T, -1) ** phi[:, None]  # [N, V] ref^phi / Z
    ref_probs = ref_probs / ref_probs.sum(-1, keepdim=True)
    for i in range(len(y)):
        grad_h, grad_W = torch.autograd.grad(s["kl_forward"][i], (h, W), retain_graph=True)
        expected_h, expected_W = torch.zeros_like(h), torch.zeros_like(W)
        for v in range(W.shape[0]):
            score_h, score_W = torch.autograd.grad(torch.log_softmax(h[i] @ W.T / T, -1)[v], (h, W))
            expected_h -= ref_probs[i, v] * score_h
            expected_W -= ref_probs[i, v] * score_W
        torch.testing.assert_close(grad_h, expected_h, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad_W, expected_W, atol=1e-5, rtol=1e-5)

    z = (h @ W.T).detach().requires_grad_()  # [N, V] policy logits
    s = stats_from_logits(z, y.tolist(), T, ref_hidden=ref_h @ ref_W.T, ref_sharpness=phi)
    (grad_z,) = torch.autograd.grad(s["kl_forward"].sum(), z)
    torch.testing.assert_close(grad_z, (torch.softmax(z / T, -1) - ref_probs).detach() / T, atol=1e-6, rtol=1e-5)


def combine(stats, mix):
    return (mix[0] * stats["logp"] + mix[1] * stats["entropy"] + mix[2] * stats["kl_forward"]
            + mix[3] * stats["kl_reverse"]).sum()


def test_chunked_and_unchunked_agree_in_values_and_gradients():
    """chunk_size=3 (checkpointed chunks, a ragged last one) vs one chunk vs the naive float64 reference, at T=0.6.

    The scalar combines logp, entropy and both exact KLs with random per-position weights; gradients w.r.t. the hidden
    states and the head. The reference inputs carry no gradient (as in training), and stay so.
    """
    h, W, y, ref_h, ref_W, phi = random_case(n=10)
    mix = torch.randn(4, len(y), generator=torch.Generator().manual_seed(5))
    results = []
    for chunk in (3, 10, 64):
        s = grpo.token_stats(h, W, y, 0.6, chunk, ref_hidden=ref_h, ref_head=ref_W, ref_sharpness=phi)
        results.append({**s, "grads": torch.autograd.grad(combine(s, mix), (h, W))})
    naive = naive_stats(h, W, y, 0.6, ref_h, ref_W, phi)
    naive["grads"] = torch.autograd.grad(combine(naive, mix.double()), (h, W))
    for r in results[1:] + [naive]:
        for name in ("logp", "entropy", "ref_logp", "kl_forward", "kl_reverse"):
            torch.testing.assert_close(results[0][name].double(), r[name].double(), atol=1e-5, rtol=1e-5)
        for g0, g in zip(results[0]["grads"], r["grads"]):
            torch.testing.assert_close(g0.double(), g.double(), atol=1e-5, rtol=1e-5)
    assert ref_h.grad is None and ref_W.grad is None and not ref_h.requires_grad


# ----------------------------------------------------------------------------------------------------------------
# Temperature, end to end: what vLLM samples at T = 0.6 is scored the same by the trainer


def test_vllm_logprobs_equal_trainer_logprobs_at_temperature(engine, tiny_model):
    lm = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    engine.sync_weights(lm.state_dict().items())  # other tests may have trained the shared engine
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompts = [data.make_prompt(tok, data.Problem(str(i), f"What is {i} * 3?", str(3 * i))).prompt_ids
               for i in range(3)]
    samples = [s for group in engine.generate(prompts, n=2, temperature=0.6, max_tokens=12, seeds=[3, 13, 23])
               for s in group]
    scorer = grpo.Policy(lm)
    ids, attention_mask, loss_mask = grpo.batch_tensors(
        [dict(ids=s.prompt_ids + s.completion_ids, n_prompt=len(s.prompt_ids)) for s in samples], "cpu")  # [b, S]
    vllm_logp = torch.tensor([lp for s in samples for lp in s.logprobs])
    with torch.no_grad():
        at_06 = scorer(ids, attention_mask, loss_mask, temperature=0.6, chunk_size=5)["logp"]
        at_1 = scorer(ids, attention_mask, loss_mask, temperature=1.0, chunk_size=5)["logp"]
    assert len(vllm_logp) == len(at_06) > 20
    assert (at_06 - vllm_logp).abs().max().item() < 1e-4
    assert (at_1 - vllm_logp).abs().max().item() > 1e-2, "scoring at the wrong temperature must be visible"


# ----------------------------------------------------------------------------------------------------------------
# --help


def help_blocks() -> dict[str, str]:
    """`python grpo.py --help`, as {flag: its whole help text on one line}."""
    env = {**os.environ, "COLUMNS": "120"}
    out = subprocess.run([sys.executable, str(ROOT / "grpo.py"), "--help"], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120, check=True).stdout
    blocks, flag = {}, None
    for line in out.splitlines():
        started = re.match(r"  (--[a-z0-9-]+)", line)
        if started:
            flag = started.group(1)
            blocks[flag] = line
        elif flag and line.startswith("    "):
            blocks[flag] += " " + line.strip()
        else:
            flag = None
    return {flag: " ".join(text.split()) for flag, text in blocks.items()}


GRPO = r"(?<!Dr\.)GRPO"  # GRPO itself, not as part of Dr.GRPO
PAPERS = {
    "loss_agg": [r"DAPO", GRPO, r"Dr\.GRPO", r"POPE"],
    "kl": [GRPO, r"RAPO"],
    "kl_coef": [r"DeepSeekMath|GRPO"],
    "eps_high": [r"DAPO"],
    "adv_std_norm": [GRPO, r"Dr\.GRPO"],
    "entropy_coef": [r"POPE"],
    "ref_nucleus": [r"RAPO"],
}


def test_help_documents_every_option_and_its_paper():
    blocks = help_blocks()
    for f in grpo.Config.__dataclass_fields__.values():
        flag = "--" + f.name.replace("_", "-")
        assert flag in blocks, f"{flag} missing from --help"
        assert len(blocks[flag]) > len(flag) + 20, f"{flag} has no real help text: {blocks[flag]!r}"
    for name, patterns in PAPERS.items():
        text = blocks["--" + name.replace("_", "-")]
        for pattern in patterns:
            assert re.search(pattern, text), f"--{name} help does not name {pattern}: {text}"
