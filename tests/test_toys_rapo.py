"""RAPO's toy world v3 ("four ways to add"): each way is right exactly on the kinds its procedure can do, a miscopy
is never right, the pulls are the exact gradients of both KL terms, the computed optima leave the support forward and
not reverse, `python toys/rapo_world.py` runs end to end (small) with equal budgets, and, in one slow test, what the
toy must show whatever the claims' outcome: on the default base model, the off-support way is absent from 10^4
samples and has reference probability 1e-6..1e-8, and its optima (forward > 1%, reverse < 1e-4)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

import data
import rapo_world
import tiny

# which ways are right on which kind: the table of rapo_world's docstring
RIGHT = {"plain": {"direct", "careful", "count", "remainder"}, "wrap": {"careful", "count", "remainder"},
         "mod8": {"count", "remainder"}, "add13": {"remainder"}}


def score(text: str, p: data.Problem) -> float:
    return rapo_world.toy_reward(text, data.Prompt(p, []))


def test_each_way_is_right_exactly_on_the_kinds_its_procedure_can_do() -> None:
    rng = random.Random(0)
    for kind in list(rapo_world.KINDS) * 100:
        p = rapo_world.make_problem(rng, kind)
        assert rapo_world.kind_of(p) == kind
        for way in rapo_world.WAYS:
            text = rapo_world.answer(way, p.problem)
            assert score(text, p) == float(way in RIGHT[kind]), (kind, way, p.problem, text)
            assert rapo_world.way_of(text) == way
            assert score(rapo_world.answer(way, p.problem, slip=1.0, rng=rng), p) == 0.0  # a miscopy is never right
    assert rapo_world.way_of("d7 is") == "other"


def test_splits_draw_every_kind_evenly_and_training_as_drawn() -> None:
    held_out = rapo_world.split(64, 0, "eval", tuple(rapo_world.KINDS))
    assert [sum(rapo_world.kind_of(p) == k for p in held_out) for k in rapo_world.KINDS] == [16] * 4
    train = rapo_world.split(256, 0, "train")
    assert {rapo_world.kind_of(p) for p in train} == {"plain", "wrap"}
    assert 0.2 < np.mean([rapo_world.kind_of(p) == "wrap" for p in train]) < 0.4  # d in 7..9: 30% as drawn
    assert [p.problem for p in train] == [p.problem for p in rapo_world.split(256, 0, "train")]
    assert [p.problem for p in train] != [p.problem for p in rapo_world.split(256, 1, "train")]


def test_pass_curve_is_the_unbiased_estimator_up_to_k_max() -> None:
    scores = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=float)  # [P, n]
    curve = rapo_world.pass_curve(scores, k_max=4)
    assert list(curve) == ["pass@1", "pass@2", "pass@4"]
    assert np.isclose(curve["pass@1"], (0.25 + 0 + 1) / 3) and np.isclose(curve["pass@4"], 2 / 3)
    assert np.isclose(curve["pass@2"], (0.5 + 0 + 1) / 3)  # 1 - C(3,2)/C(4,2) = 0.5 for the first problem
    assert list(rapo_world.pass_curve(scores, k_max=1)) == ["pass@1"]


def test_pulls_are_the_exact_gradients_of_both_kl_terms() -> None:
    """-d(alpha KL)/dz on count's logit, by autograd in float64 over a 50-token vocabulary, against
    first_token_stats's closed forms. Planted bug that fails it: the reverse pull without the - KL term."""
    torch.manual_seed(0)
    z = torch.randn(3, 50, dtype=torch.float64, requires_grad=True)  # [P, V]
    ref = torch.softmax(torch.randn(3, 50, dtype=torch.float64) * 3, -1)  # [P, V]
    firsts, alpha = {"direct": 0, "careful": 1, "count": 2, "remainder": 3}, 0.3
    pi = torch.softmax(z, -1)
    forward = alpha * (ref * (ref.log() - pi.log())).sum()  # sum over prompts of alpha KL(ref || pi)
    reverse = alpha * (pi * (pi.log() - ref.log())).sum()
    (g_forward,) = torch.autograd.grad(forward, z, retain_graph=True)
    (g_reverse,) = torch.autograd.grad(reverse, z)
    stats = rapo_world.first_token_stats(pi.detach(), ref, firsts, alpha)
    assert stats["pull_forward_count"] == pytest.approx(float(-g_forward[:, 2].mean()), rel=1e-9)
    assert stats["pull_reverse_count"] == pytest.approx(float(-g_reverse[:, 2].mean()), rel=1e-9)
    assert stats["share_count"] == pytest.approx(float(pi[:, 2].mean()))


def test_optima_leave_the_support_forward_and_not_reverse() -> None:
    """A first-token distribution like the base model's: the ways at 95.5%, 4%, 0.49%, 1e-7, and 10^4 tail tokens at
    ~1e-8 each; rewards 0.63, 0.7, 0.5, 0.9 (the training mix's). alpha 0.3, beta 0.03: the forward optimum puts
    ~9% on remainder, the reverse one ~1e-6."""
    V = 10_000
    ref = torch.full((1, V), 1e-9, dtype=torch.float64)
    ref[0, :4] = torch.tensor([0.955, 0.04, 0.0049, 1e-7], dtype=torch.float64)
    ref[0, 4:] *= (1 - ref[0, :4].sum()) / ref[0, 4:].sum()
    firsts = dict(zip(rapo_world.WAYS, range(4)))
    opt = rapo_world.optima(ref, {"direct": 0.63, "careful": 0.7, "count": 0.5, "remainder": 0.9}, firsts, 0.3, 0.03)
    assert opt["forward"]["share_remainder"] > 0.01 and opt["reverse"]["share_remainder"] < 1e-4
    assert opt["forward"]["off_support_mass"] > 0.01 > opt["reverse"]["off_support_mass"]


def test_the_targets_only_head_gives_the_same_warm_start_loss() -> None:
    """tiny.warm_start(head_on_targets=True), rapo_world's 2x faster build, computes the same loss per step."""
    import copy

    from transformers import Qwen3ForCausalLM

    tok = tiny.make_tokenizer(tiny.DEFAULT_CORPUS, 384)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(tiny.qwen3_config(tok, 64, 2, 256))
    examples = [(tok.encode("What is 1/2 + 1/4?"), tok.encode(" The answer is 3/4") + [tok.eos_token_id]),
                (tok.encode("Solve x"), tok.encode(" = 2"))] * 8
    full = tiny.warm_start(copy.deepcopy(model), examples, steps=3, batch_size=4, log_every=0)
    targets = tiny.warm_start(copy.deepcopy(model), examples, steps=3, batch_size=4, log_every=0, head_on_targets=True)
    assert targets == pytest.approx(full, rel=1e-5)


def test_rapo_toy_runs_end_to_end_with_equal_budgets(tmp_path) -> None:
    """`python toys/rapo_world.py`, shrunk: a small base model, every arm, two seeds, two training segments."""
    import matplotlib.image

    base = rapo_world.build_base_model(str(tmp_path / "base"), n_train=300, steps=3, batch_size=8, hidden_size=64,
                                       num_layers=2, vocab_size=1000, log_every=0)
    rapo_world.main(["--base-model", base, "--out-dir", str(tmp_path), "--arms", "all", "--seeds", "0,1",
                     "--steps", "2", "--measure-every", "1", "--n-train", "8", "--n-eval", "4", "--eval-samples", "4",
                     "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "8", "--way-samples", "2",
                     "--temperatures", "0,0.6,1"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["seeds"]) == ["0", "1"] and set(summary["table"]) == {"base", *rapo_world.ARMS}
    runs = summary["seeds"]["0"]
    assert set(runs["base"]["pass"]) == {"T0.0", "T0.6", "T1.0"}
    assert list(runs["base"]["pass"]["T1.0"]["all"]) == ["pass@1"]  # n = 4: k up to 1 (n >= 4k)
    assert set(runs["base"]["pass"]["T1.0"]) == {"all", *rapo_world.KINDS}
    arms = {arm: r for arm, r in runs.items() if arm != "base"}
    assert {r["rollouts"] for r in arms.values()} == {2 * 2 * 2}  # the same budget in every arm
    assert all(r["sampled_tokens"] > 0 and len(r["entropy"]) == 2 for r in arms.values())
    assert all([c["step"] for c in r["first_token"]] == [1, 2] for r in arms.values())
    assert set(runs["base"]["optima"]["plain"]) == {"forward", "reverse"}
    mean, low, high = summary["table"]["rapo"]["count first"]
    assert low <= mean <= high
    assert matplotlib.image.imread(tmp_path / "rapo_toy.png").shape[0] > 100
    # --merge: the same table from the summary file alone, written elsewhere; a seed given twice is refused
    rapo_world.main(["--merge", str(tmp_path / "summary.json"), "--out-dir", str(tmp_path / "merged")])
    assert json.loads((tmp_path / "merged" / "summary.json").read_text())["table"] == summary["table"]
    with pytest.raises(SystemExit, match="seed 0 is in"):  # one line, error: ...
        rapo_world.main(["--merge", f"{tmp_path / 'summary.json'},{tmp_path / 'merged' / 'summary.json'}",
                         "--out-dir", str(tmp_path / "twice")])


@pytest.mark.slow
def test_the_off_support_way_is_absent_from_the_base_model_and_only_the_forward_optimum_reaches_it(tmp_path) -> None:
    """What the toy must show whatever the outcome of the claims, on the default base model (built here, ~3 minutes)
    and two seeds' training problems: remainder's first token has reference probability in 1e-8..1e-6, none of
    10^4 samples (T 1) starts with it, and the computed optima (per training kind, rewards measured) put more than the
    reverse KL's mass on it forward, < 1e-4 reverse, and on wrap problems > 1% forward (on plain ones direct out-earns
    it: 1.3e-5 forward on seed 0). Planted bug that fails it: remainder's first token as a
    warm-start target (SHARES["remainder"] = 0.005, `warm_start_examples`'s start examples)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rollout import make_engine
    import evaluate
    import grpo
    from common import BENCHMARK

    base = rapo_world.build_base_model(str(tmp_path / "base"), log_every=0)
    tok, model = AutoTokenizer.from_pretrained(base), AutoModelForCausalLM.from_pretrained(base)
    firsts = {w: rapo_world.first_token(tok, w) for w in rapo_world.WAYS}
    engine = make_engine(grpo.Config(model=base, max_model_len=256), 1)
    for seed in (0, 1):
        train = [data.make_prompt(tok, p) for p in rapo_world.split(40, seed, "train")]
        ref = rapo_world.first_token_probs(model, train)  # [P, V]
        assert 1e-8 < float(ref[:, firsts["remainder"]].mean()) < 1e-6, float(ref[:, firsts["remainder"]].mean())
        groups = evaluate.sample(engine, train, 250, 1.0, 4, seed=seed, stage=BENCHMARK, round_index=0)
        ways = [rapo_world.way_of(s.text) for g in groups for s in g]
        assert len(ways) == 10_000 and "remainder" not in ways and ways.count("count") > 0
        for kind in rapo_world.TRAIN_KINDS:  # the optima per kind, as run_seed computes them
            mine = [p for p in train if rapo_world.kind_of(p.problem) == kind][:8]
            rewards = rapo_world.way_rewards(engine, tok, [p.problem for p in mine], firsts, 16, 48, seed)
            opt = rapo_world.optima(rapo_world.first_token_probs(model, mine), rewards, firsts, 0.3, 0.03)
            forward, reverse = opt["forward"]["share_remainder"], opt["reverse"]["share_remainder"]
            assert forward > reverse and reverse < 1e-4, (kind, opt)
            if kind == "wrap":  # where remainder out-earns every in-support way: the forward optimum leaves the support
                assert forward > 0.01, (kind, opt)
    del engine


def test_rapo_help_names_the_toy_flags(capsys) -> None:
    """`python toys/rapo_world.py --help` documents the toy's flags (their help holds a '%', which argparse would
    otherwise read as a format)."""
    with pytest.raises(SystemExit) as exit_:
        rapo_world.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "--kl-coef" in out and "4%" in out and "--measure-every" in out
