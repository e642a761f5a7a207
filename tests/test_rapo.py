"""RAPO: the reward-aware reference in the shared loss, Proposition 3.3 numerically, and the three arms of rapo.py."""

import contextlib
import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import data
import grpo
import prop33
import rapo


def stats_with_reference(phi: torch.Tensor, temperature: float = 0.7):
    """token_stats at 6 positions (chunks of 4), and the policy's / reference's logits / T at those positions."""
    torch.manual_seed(0)
    h, W, ref_h, ref_W = torch.randn(6, 8), torch.randn(11, 8), torch.randn(6, 8), torch.randn(11, 8)
    s = grpo.token_stats(h, W, torch.tensor([0, 3, 3, 10, 1, 7]), temperature, chunk_size=4, ref_hidden=ref_h,
                         ref_head=ref_W, ref_sharpness=phi)
    return s, h @ W.T / temperature, ref_h @ ref_W.T / temperature  # [6, 11] each


def forward_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, written out."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def test_phi_one_is_the_plain_forward_kl():
    s, logits, ref_logits = stats_with_reference(torch.ones(6))
    expected = forward_kl(torch.log_softmax(ref_logits, -1), torch.log_softmax(logits, -1))
    assert torch.allclose(s["kl_forward"], expected, atol=1e-6, rtol=0)
    assert expected.min() > 0.1, "policy and reference differ: a KL of zero would prove nothing"
    default, _, _ = stats_with_reference(None)  # no phi given: the plain reference
    assert torch.equal(default["kl_forward"], s["kl_forward"])


def test_phi_to_zero_is_the_uniform_distribution():
    s, logits, _ = stats_with_reference(torch.full((6,), 1e-6))
    V = logits.shape[1]
    assert torch.allclose(s["ref_logp"], torch.full((6,), -math.log(V)), atol=1e-4, rtol=0)
    uniform = torch.full_like(logits, -math.log(V))
    assert torch.allclose(s["kl_forward"], forward_kl(uniform, torch.log_softmax(logits, -1)), atol=1e-4, rtol=0)


def test_phi_per_position_is_the_reference_at_temperature_one_over_phi():
    phi = torch.tensor([1.0, 0.5, 0.5, 0.25, 1.0, 0.75])  # one value per position, as train() passes them
    s, logits, ref_logits = stats_with_reference(phi)
    ref_hat = torch.log_softmax(ref_logits * phi[:, None], -1)  # [6, 11] ref^phi / Z = softmax(ref_logits * phi)
    assert torch.allclose(s["kl_forward"], forward_kl(ref_hat, torch.log_softmax(logits, -1)), atol=1e-5, rtol=0)
    plain, _, _ = stats_with_reference(torch.ones(6))
    assert (s["kl_forward"] - plain["kl_forward"])[phi < 1].abs().min() > 1e-3, "phi < 1 must change the KL"


def test_prop33_gradient_ascent_reaches_the_root_and_leaves_the_support():
    d = prop33.prop33_demo()
    ref, reward, root, ascent, reverse = d["ref"], d["reward"], d["root"], d["ascent"], d["reverse"]
    outside = ref == 0
    assert outside.sum() == 6 and reward[outside].max() == 1, "the toy must reward tokens outside the support"
    for pi in (root, ascent, reverse):
        assert abs(pi.sum() - 1) < 1e-9
    # the root solves Proposition 3.3's condition for every token, with the closed form outside the support
    condition = reward + d["alpha"] * ref / root - d["beta"] * (np.log(root) + 1)
    assert np.abs(condition - d["lam"]).max() < 1e-9
    assert np.allclose(root[outside], np.exp((reward[outside] - d["lam"]) / d["beta"] - 1), rtol=1e-9)
    assert np.abs(ascent - root).max() < 1e-4
    # forward KL + entropy: mass on every token the reference never produces, more where the reward is 1
    assert root[outside].min() > 0 and ascent[outside].min() > 1e-6
    assert root[outside & (reward == 1)].min() > 5 * root[outside & (reward == 0)].max()
    # reverse KL: exactly none there
    assert np.all(reverse[outside] == 0) and reverse[~outside].min() > 0


ALPHAS, BETAS = (1e-3, 1e-2, 0.1, 0.3, 1.0), (1e-4, 1e-3, 1e-2, 0.1, 1.0)


def references() -> dict[str, np.ndarray]:
    """The demo's reference (exact zeros off tokens 3-12), and the same with two entries of ~1e-8 beside the zeros."""
    ref = prop33.prop33_demo()["ref"]
    tiny = ref.copy()
    tiny[[0, 15]] = 1e-8
    return {"demo": ref, "tiny entries": tiny / tiny.sum()}


def objective(pi, ref, reward, alpha, beta, kl="forward"):
    """E_pi[r] - alpha KL + beta H(pi), with KL(ref || pi) (forward) or KL(pi || ref) (reverse); 0 log 0 = 0."""
    pi, ref, reward = torch.tensor(pi), torch.tensor(ref), torch.tensor(reward)
    entropy = -torch.special.xlogy(pi, pi).sum()
    p, q = (ref, pi) if kl == "forward" else (pi, ref)
    return float((pi * reward).sum() - alpha * (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum()
                 + beta * entropy)


def check_prop33_root(ref, reward, alpha, beta):
    """The root sums to 1 and solves the condition on the support (in log space: pi(y) = e^-1000 off it at small
    beta) and its closed form off the support; no nearby policy scores higher."""
    root, lam = prop33.prop33_root(ref, reward, alpha, beta)
    support = ref > 0
    assert abs(root.sum() - 1) < 1e-9 and np.all(root[support] > 0), (alpha, beta)
    condition = reward[support] + alpha * ref[support] / root[support] - beta * (np.log(root[support]) + 1)
    assert np.abs(condition - lam).max() < 1e-9 * max(1.0, abs(lam)), (alpha, beta)
    assert np.allclose(root[~support], np.exp((reward[~support] - lam) / beta - 1), rtol=1e-9, atol=0), (alpha, beta)
    best = objective(root, ref, reward, alpha, beta)
    rng = np.random.default_rng(0)
    for _ in range(20):  # the optimum of a concave objective: every nearby policy scores lower
        near = root * np.exp(rng.normal(0, 0.01, len(root)))
        assert objective(near / near.sum(), ref, reward, alpha, beta) < best, (alpha, beta)
    return root


def test_prop33_root_at_the_toy_weights():
    d = prop33.prop33_demo()  # the RAPO toy arm's alpha 0.3 (kl_coef) and beta 1e-3 (entropy_coef)
    root = check_prop33_root(d["ref"], d["reward"], 0.3, 1e-3)
    outside = d["ref"] == 0  # pi = e^((r - lambda) / beta - 1) there, lambda ~1.09: 1e-39 at reward 1, e^-1090 at 0
    assert root[outside & (d["reward"] == 1)].min() > 0, "positive mass outside the support even at beta 1e-3"


def test_prop33_root_converges_over_a_grid_and_matches_gradient_ascent_where_it_converges():
    reward = prop33.prop33_demo()["reward"]
    for name, ref in references().items():
        for alpha in ALPHAS:
            for beta in BETAS:
                root = check_prop33_root(ref, reward, alpha, beta)
                if beta == 1.0:  # where plain gradient ascent converges in well under a second (beta < 0.1: it
                    # must push logits to -1/beta, and takes far more than 100k steps)
                    assert np.abs(prop33.ascend(ref, reward, alpha, beta) - root).max() < 1e-9, (name, alpha, beta)


def test_reverse_kl_optimum_is_exact_over_the_grid():
    reward = prop33.prop33_demo()["reward"]
    rng = np.random.default_rng(0)
    for ref in references().values():
        support = ref > 0
        for alpha in ALPHAS:
            for beta in BETAS:
                pi = prop33.reverse_kl_optimum(ref, reward, alpha, beta)
                assert abs(pi.sum() - 1) < 1e-12 and np.all(pi[~support] == 0), (alpha, beta)
                # stationary on the support: r - alpha (log pi/ref + 1) - beta (log pi + 1) is one lambda there
                keep = support & (pi > 0)  # on the support, pi underflows to 0 at small alpha + beta
                grad = reward[keep] - alpha * (np.log(pi[keep]) - np.log(ref[keep])) - beta * np.log(pi[keep])
                assert np.ptp(grad) < 1e-9 * max(1.0, np.abs(grad).max()), (alpha, beta)
                best = objective(pi, ref, reward, alpha, beta, kl="reverse")
                for _ in range(20):  # every other policy on the support scores lower
                    other = np.where(support, pi + rng.uniform(0, 0.01, len(pi)), 0.0)
                    assert objective(other / other.sum(), ref, reward, alpha, beta, kl="reverse") < best


def test_theory_command_prints_the_table_and_saves_the_plot(capsys, tmp_path):
    prop33.main(["--plot", str(tmp_path / "prop33.png")])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"\s+\d+\s", line)]
    assert len(rows) == 16 and "reverse KL 0.0000" in out, out
    assert (tmp_path / "prop33.png").stat().st_size > 10_000


def test_bisection_refuses_an_unbracketed_root():
    with pytest.raises(ValueError, match="not bracketed"):
        prop33.bisect_decreasing(lambda x: 1 - x, 2.0, 3.0)


def test_help_documents_every_rapo_option_with_its_provenance(capsys):
    with pytest.raises(SystemExit):
        rapo.parse(["--help"])
    blocks = re.split(r"\n  (?=--)", capsys.readouterr().out)  # one block per option
    for name in ["model", "data", "kl", "kl_coef", "ref_phi_min", "ref_phi_source", "entropy_coef", "group_size",
                 "lr", "eps_low", "eps_high", "max_new_tokens", "temperature", "arm"]:
        flag = "--" + name.replace("_", "-")
        [block] = [b for b in blocks if b.startswith(flag + " ")]
        text = " ".join(block.split())
        assert "[paper" in text or "[this project's choice" in text, text
    assert "(default: rapo)" in " ".join("".join(blocks).split())


def test_explicit_flags_win_over_the_arm_preset(tiny_model, tmp_path):
    cfg = rapo.parse(["--arm", "grpo-fkl", "--kl-coef", "0.5"])
    assert (cfg.kl, cfg.kl_coef, cfg.ref_phi_min) == ("forward-exact", 0.5, 1.0)
    data_file = tmp_path / "train.jsonl"
    data_file.write_text('{"problem": "1+1?", "answer": "2"}\n')
    result = subprocess.run([sys.executable, str(Path(rapo.__file__)), "--ref-phi-min", "0", "--model", tiny_model,
                             "--data", str(data_file), "--out-dir", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "--ref-phi-min 0.0: must be in (0, 1]" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("arm", list(rapo.ARMS))
def test_each_arm_trains_on_the_tiny_model(tiny_model, engine, tmp_path, arm):
    cfg = rapo.parse(["--arm", arm])
    assert {k: getattr(cfg, k) for k in rapo.ARMS[arm]} == rapo.ARMS[arm]
    assert cfg.entropy_coef == 1e-3 and cfg.model == "" and cfg.data == "simplerl-zoo"  # --model is required
    cfg = dataclasses.replace(cfg, model=tiny_model, out_dir=str(tmp_path), steps=2, prompts_per_step=2,
                              group_size=4, max_new_tokens=8, max_model_len=1024, minibatches=1, lr=1e-3,
                              grad_checkpointing=False, log_samples=0)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompts = [data.make_prompt(tok, data.Problem(str(i), f"What is {i} + {i}?", str(2 * i))) for i in range(4)]
    history = grpo.train(cfg, prompts, lambda text, prompt: float(len(text) % 2 == 0), engine=engine,
                         ref_sharpness=rapo.phi_rule(cfg.ref_phi_min, cfg.ref_phi_source))
    assert len(history) == 2
    assert all(math.isfinite(h["kl"]) and math.isfinite(h["entropy"]) and h["entropy"] > 0 for h in history)
    # step 0 runs before any update, so the policy is the reference: only RAPO's reweighted reference differs from it
    assert history[0]["reward"] < 1, "some sample must fail for phi < 1 to appear"
    if cfg.ref_phi_min == 1:
        assert history[0]["kl"] < 1e-6, history[0]
    else:
        assert history[0]["kl"] > 1e-4, history[0]


# ----------------------------------------------------------------------------------------------------------------
# The reweighted reference at Qwen's vocabulary (bench/bench_reweighting.py has the whole table)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_reweighting  # noqa: E402


@pytest.mark.parametrize("head", list(bench_reweighting.heads()))
def test_reweighting_keeps_tail_and_entropy_at_151936_tokens_for_every_phi(head):
    """At the trainer's default --ref-nucleus, on an LLM-shaped next-token distribution (a head, a tail of log-probs
    ~ N(-20, 2) over 151,936 tokens), for phi from 1e-3 to 1: the reweighted reference keeps <= 1% of its mass on
    tokens the reference gives < 1e-4 (exactly the reference's own share) and its entropy within 0.5 nats of the
    reference's. Over the whole vocabulary (nucleus 0) phi = 0.5 puts most of the mass there."""
    log_ref = bench_reweighting.distribution(bench_reweighting.heads()[head], mu=-20.0)
    ref_tail = log_ref.exp()[log_ref.exp() < grpo.REF_TAIL_BELOW].sum().item()
    for phi in (1e-3, 0.1, 0.3, 0.5, 0.8, 1.0):
        m = bench_reweighting.measure(log_ref, phi, grpo.Config().ref_nucleus)
        assert m["tail"] <= 0.01 and m["tail"] == pytest.approx(ref_tail, rel=1e-9), (phi, m)
        assert abs(m["entropy_gain"]) <= 0.5, (phi, m)
    assert bench_reweighting.measure(log_ref, 0.5, nucleus=0.0)["tail"] > 0.5


def test_reweighting_tempers_the_nucleus_and_leaves_the_rest():
    """By hand: ref = (0.5, 0.3, 0.15, 0.05), nucleus 0.25 -> N = {0.5, 0.3, 0.15} (0.05 < 0.125), mass 0.95.
    phi = 0.5: sqrt(0.5), sqrt(0.3), sqrt(0.15) = 0.7071, 0.5477, 0.3873, sum 1.6421 -> x 0.95 / 1.6421."""
    ref = torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64).log()
    hat = grpo.reweighted_reference(ref, torch.tensor([0.5], dtype=torch.float64), nucleus=0.25).exp()[0]
    root = torch.tensor([0.5, 0.3, 0.15], dtype=torch.float64).sqrt()
    torch.testing.assert_close(hat, torch.cat([0.95 * root / root.sum(), torch.tensor([0.05], dtype=torch.float64)]))
    same = grpo.reweighted_reference(ref, torch.tensor([1.0], dtype=torch.float64), nucleus=0.25)
    torch.testing.assert_close(same, ref)  # phi = 1: the plain reference
    whole = grpo.reweighted_reference(ref, torch.tensor([0.5], dtype=torch.float64), nucleus=0.0)
    torch.testing.assert_close(whole, torch.log_softmax(0.5 * ref, -1))  # nucleus 0: ref^phi / Z


@pytest.mark.parametrize("source", ["sample", "group-mean"])
def test_failed_samples_get_the_reweighted_reference_through_the_trainer(tiny_model, source):
    """Through the trainer's own path (rapo.phi_rule -> rollout_tensors -> micro_batch_stats): in a group with rewards (1, 0) and phi_min 0.5, the
    correct sample is scored against the plain reference and the failed one against ref^0.5 in the nucleus (source
    'sample'); with 'group-mean' both get phi = 0.75. Planting phi from the wrong end fails this."""
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt_ids = data.render(tok, "What is 2 + 2?")
    completions = [tok.encode("4 is it")[:4], tok.encode("5, no")[:4]]
    Sample = __import__("rollout").Sample
    groups = [[Sample(prompt_ids, c, [0.0] * len(c), "", "stop") for c in completions]]
    cfg = grpo.Config(model=tiny_model, kl_coef=0.1, kl="forward-exact",
                      ref_nucleus=0.0)  # the whole vocabulary: every position changes with phi
    rewards = torch.tensor([[1.0, 0.0]])
    ro = grpo.rollout_tensors(groups, rewards, rapo.phi_rule(0.5, source)(rewards), cfg, "cpu")
    policy = grpo.load_model(cfg, "cpu", world=1, trainable=True)
    ref = grpo.load_model(cfg, "cpu", world=1, trainable=False)
    with torch.no_grad():
        got = grpo.micro_batch_stats(policy, ref, ro, cfg, contextlib.nullcontext())["ref_logp"].split(ro.loss_mask.sum(1).tolist())
        hidden = ref(ro.ids, ro.attention_mask, ro.loss_mask)  # [N, H]
    plain = torch.log_softmax(hidden @ ref.head.T / cfg.temperature, -1)  # [N, V]
    targets = ro.ids[:, 1:][ro.loss_mask[:, 1:]]  # [N]
    want = {phi: grpo.reweighted_reference(plain, torch.full((len(targets),), phi), 0.0).gather(-1, targets[:, None])
            [:, 0].split(ro.loss_mask.sum(1).tolist()) for phi in (1.0, 0.5, 0.75)}
    phis = (1.0, 0.5) if source == "sample" else (0.75, 0.75)
    for i, phi in enumerate(phis):
        torch.testing.assert_close(got[i], want[phi][i])
    assert (want[0.5][1] - want[1.0][1]).abs().max() > 1e-3, "phi must change the reference's logprobs here"


def test_a_flag_given_at_its_default_value_still_wins_over_the_arm():
    """--kl forward-exact is RapoConfig's own default: given explicitly, the grpo-rkl preset must not replace it
    (nor --out-dir, given as --flag=value)."""
    cfg = rapo.parse(["--arm", "grpo-rkl", "--kl", "forward-exact", "--out-dir=runs/mine"])
    assert (cfg.kl, cfg.kl_coef, cfg.ref_phi_min, cfg.out_dir) == ("forward-exact", 1e-3, 1.0, "runs/mine")
