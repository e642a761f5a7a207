r"""RAPO's toy world, v3: forward vs reverse KL and reweighted vs plain, on rare ways and beyond the support.

    python toys/rapo_world.py                  # grpo-rkl against rapo, one seed, pass@k to k = 16 (< 10 min, 2 cores)
    python toys/rapo_world.py --arms all --seeds 0,1,2 --eval-samples 256 --temperatures 0,0.6,1.0   # the table

RAPO's claims (Deng et al., arXiv 2510.03865; docs/algorithms.md §3) are about which answers a KL-regularised policy
can still produce. This file builds a task family in which each claim can come out either way, a tiny base model
with a 10^4-token vocabulary, and six matched arms, then measures them. The outcome, against the predictions
below: toys/README.md.

The task ("four ways to add"). Four registers; add K to register d, mod M. An answer starts with one of four ways,
and its first token says which:

    >>> import random
    >>> p = make_problem(random.Random(3), "add13")
    >>> print(p.problem)
    Registers start at a5 b9 c7 d1. Add 13 to register d, mod 8. What are the registers?
    >>> for way in WAYS:
    ...     print(f"{way:9s}", repr(answer(way, p.problem)), toy_reward(answer(way, p.problem), data.Prompt(p, [])))
    direct    '\\boxed{a5 b9 c7 d7}' 0.0
    careful   'd: 1 + 13 = 14, last digit 4\n\\boxed{a5 b9 c7 d4}' 0.0
    count     'count: 1 2 3 4\n\\boxed{a5 b9 c7 d4}' 0.0
    remainder 'remainder: q1 r6\n\\boxed{a5 b9 c7 d6}' 1.0

Each way is a procedure with its own blind spot (`answer`), so which ways are right depends on the problem's kind:

    kind     problems                          direct  careful  count  remainder
    plain    K 3, M 10, d + 3 < 10             right   right    right  right
    wrap     K 3, M 10, d + 3 >= 10            -       right    right  right     (direct saturates at M - 1)
    mod8     K 3, M 8, d + 3 >= 8              -       -        right  right     (careful takes the last digit)
    add13    K 13, M 8, d != 2                 -       -        -      right     (count counts K's last digit)

and each miscopies a register at its own rate (SLIP: 0.1, 0.3, 0.5, 0.1; a miscopy is never right by luck). The base
model starts its answers with direct, careful and count in the shares 95.5%, 4% and 0.5% (SHARES), and never with
remainder: its warm-start teaches each way's body given its first token, and, separately, how often to start each
way; remainder's first token is never a target (`warm_start_examples`), so its probability is the tail's: 5e-8 to 8e-8,
measured (toys/README.md). The training problems are plain and wrap (as drawn, ~30% wrap); the held-out problems are
16 of each kind. So each claim has its own place:
- **Beyond the support** (Lemma 3.1 vs Proposition 3.3): add13 is solvable only by remainder (by its procedure; the
  trained arms got there through back doors: v2's P2, v3's Q2), whose first token the base model gives ~1e-7 and
  never samples (none in 10^4 samples, tests/test_toys_rapo.py). Every arm has the same entropy bonus, beta = 0.1
  alpha. `optima` computes, from the base model's first-token distribution and each way's measured reward, the
  optimum of both objectives: the forward KL's (toys/prop33.py's `prop33_root`) puts mass on remainder, the reverse
  KL's (`reverse_kl_optimum`) next to none. Each arm's learned first-token distribution is compared with them.
- **The pull on a collapsing way**: count (0.5%) is the only in-support way right on mod8, and on the training
  problems it is the worst (0.5 right, against 0.9 and 0.7), so GRPO's pressure should drive it below the reference
  (Q3). The forward KL's restoring pull on its first-token logit is alpha (ref - pi), the reverse KL's
  -alpha pi (log(pi / ref) - KL(pi || ref)) (exact gradients of both terms at that position); both are measured
  every --measure-every steps, with count's share.
- **Reweighted vs plain forward KL**: on wrap problems the policy's common way fails and careful (4%, inside the
  reference's nucleus at --ref-nucleus 0.01) is right, so phi < 1 on failed samples tempers the reference towards it
  (grpo.reweighted_reference). Two RAPO arms take phi from the sample's own reward and from its group's mean.
- **The vocabulary**: 10,000 tokens, of which the toy's text uses ~150; the rest sit at log-probs near -16 (measured;
  an LLM's tail is -20 to -30). Each arm logs the first-token entropy and its mass on tokens the reference gives < 1e-6.

The arms (`ARMS`), the same in everything but what they are named for: alpha 0.3, beta 0.03, lr, steps, rollouts:
    grpo          no KL
    grpo-no-bonus no KL and no entropy bonus: GRPO's own pressure on the rare ways (v3; the one arm with another beta)
    grpo-rkl      + alpha KL(pi || ref), exact over the vocabulary
    grpo-fkl      + alpha KL(ref || pi), exact
    rapo          + alpha KL(ref_hat || pi), ref_hat = ref^phi on the nucleus, phi from the sample's reward
    rapo-group    the same with phi from the group's mean reward

v2's predictions (P1-P7) and their outcomes are in toys/README.md. v3 closed v2's back door (remainder's work now
shares no state with careful's), rebuilt the base model, shortened the response budget to the longest answer (32
tokens) and added grpo-no-bonus. Pre-registered predictions for v3 (written after v2's outcomes and before any v3 arm
ran; toys/README.md reports the outcome against them). Numbers are on held-out problems at T 1 unless named, the
first token on wrap training problems at the last step, "every seed" over seeds 0, 1, 2:
Q1  The optima (alpha 0.3, beta 0.03, computed per training kind from the base model): on wrap problems the forward
    KL's puts > 1% of the first token on remainder, the reverse KL's < 1e-4; on plain problems (where direct out-earns
    remainder) both < 1e-3. (Falsified if a bound fails on any seed.)
Q2  Beyond the support, the path: no arm reaches remainder in 24 steps. Its first-token share stays < 1e-4 in every
    arm and seed, and add13's pass@64 is < 0.05 in every arm and seed (the base model's ~0: no in-support way is
    right on add13, and none now shares remainder's work). The reason is v2's P2's: the forward KL's gradient on the
    token is alpha (pi - ref) ~ 0 where both are ~1e-7, and a token never sampled earns no reward. (Falsified if a
    forward-KL arm's remainder share exceeds 1e-3 on 2 of 3 seeds, or any arm's add13 pass@64 reaches 0.05.)
Q3  GRPO's own pressure collapses count: grpo-no-bonus ends with count's first-token share below a fifth of the
    reference's and mod8's pass@64 below half the base model's, on 2 of 3 seeds or more. (Falsified otherwise.)
Q4  Replicating v2 (where P4 came out the other way round): grpo-rkl keeps count's share >= grpo-fkl's on 2 of 3
    seeds or more. (Falsified otherwise.) No mechanism is claimed: this tests whether v2's outcome was the design's.
Q5  Reweighting lifts careful on wrap: rapo's and rapo-group's careful share on wrap and wrap's pass@1 exceed
    grpo-fkl's on 2 of 3 seeds or more (v2: every seed). (Falsified otherwise.)
Q6  The unanchored bonus diverges: grpo (beta 0.03, no KL) ends with first-token entropy > 5 nats and pass@1 < 0.05
    on every seed, below every KL arm and grpo-no-bonus. (Falsified if its pass@1 reaches the base model's on any
    seed.)
Q7  The tail (v2's P7 as measured): the forward-KL arms' off-support mass exceeds grpo-rkl's on every seed, and
    grpo-rkl's stays < 0.01. (Falsified if either fails on any seed.)
Q8  Reach at large k: every KL arm's mod8 pass@64 >= the base model's on every seed, and grpo-no-bonus's below it.
    (Falsified if a KL arm falls below the base model's on 2 of 3 seeds.)

Deliberately left out: the paper's models, data and k up to 1024 by default (--eval-samples 1024 gives k = 256);
sampled KL estimators (the exact sums isolate the direction); training on the held-out kinds.
"""

from __future__ import annotations

import gc
import json
import random
import string
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the algorithms, for `python toys/rapo_world.py`

import data  # noqa: E402
import evaluate  # noqa: E402
import grpo  # noqa: E402
import pope_world  # noqa: E402
import rapo  # noqa: E402
import tiny  # noqa: E402
from common import BENCHMARK, ConfigError, command_line, opt  # noqa: E402
from prop33 import prop33_root, reverse_kl_optimum  # noqa: E402
from rollout import make_engine  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------
# The task: four kinds of problem, four ways to answer
# ---------------------------------------------------------------------------------------------------------------

WAYS = ("direct", "careful", "count", "remainder")
SHARES = {"direct": 0.955, "careful": 0.04, "count": 0.005, "remainder": 0.0}  # how often the warm-start starts each
SLIP = {"direct": 0.1, "careful": 0.3, "count": 0.5, "remainder": 0.1}  # a way's chance of miscopying a, b or c
KINDS = {"plain": (3, 10), "wrap": (3, 10), "mod8": (3, 8), "add13": (13, 8)}  # kind: (K, M)
TRAIN_KINDS = ("plain", "wrap")  # the training problems: K 3, M 10, as drawn
OFF_SUPPORT = 1e-6  # a token the reference gives less than this is "off its support" in the toy's measures


def make_problem(rng: random.Random, kind: str | None = None, pid: str = "") -> data.Problem:
    """One problem of `kind`; None draws K 3, M 10 as it comes (plain or wrap, ~30% wrap)."""
    k, m = KINDS[kind or "plain"]
    while True:
        state = [rng.randrange(10) for _ in "abc"] + [rng.randrange(m)]
        d = state[3]
        if kind == "add13" and (d + k) % m != m - 1:  # d = 2 excluded: there saturating at 7 is right
            break
        if kind in (None, "plain", "wrap", "mod8") and (kind is None or (d + k >= m) == (kind != "plain")):
            break
    start = "".join(map(str, state))
    text = f"Registers start at {pope_world.show(start)}. Add {k} to register d, mod {m}. What are the registers?"
    return data.Problem(id=pid or f"add-{start}-{k}-{m}", problem=text,
                        answer=pope_world.show(start[:3] + str((d + k) % m)), solution=answer("remainder", text))


def parse(text: str) -> tuple[str, int, int, int]:
    """(the first three registers' digits, d, K, M) of a problem statement."""
    state = "".join(text.split("start at ")[1].split(".")[0].split())[1::2]  # "a3 b7 c0 d5" -> "3705"
    k, m = (int(w.rstrip(".,")) for w in (text.split("Add ")[1].split()[0], text.split("mod ")[1].split()[0]))
    return state[:3], int(state[3]), k, m


def kind_of(problem: data.Problem) -> str:
    _, d, k, m = parse(problem.problem)
    return "add13" if k == 13 else "mod8" if m == 8 else "wrap" if d + k >= m else "plain"


def answer(way: str, text: str, slip: float = 0.0, rng: random.Random | None = None) -> str:
    """A `way`'s answer to the problem `text`; with probability `slip` it miscopies one of a, b, c (always wrong).

    direct     the new state at once; a register that would pass M - 1 stops there (saturates)
    careful    the sum as two digits, then its last digit: mod 10, whatever M is
    count      counts up from d, one step per unit of K's last digit, wrapping at M
    remainder  the quotient and remainder of (d + K) / M, and keeps the remainder: right on every kind. It writes
               no sum, so no state of its work is shared with careful's (v2's "remainder: 1 + 13 = 14 = 1 x 8 + 6"
               was, and the trained arms switched from careful's sum into it: toys/README.md's P2)
    """
    rest, d, k, m = parse(text)
    if way == "direct":
        value, work = min(d + k, m - 1), ""
    elif way == "careful":
        value, work = (d + k) % 10, f"d: {d} + {k} = {d + k:02d}, last digit {(d + k) % 10}\n"
    elif way == "count":
        steps = [(d + i) % m for i in range(k % 10 + 1)]
        value, work = steps[-1], "count: " + " ".join(map(str, steps)) + "\n"
    elif way == "remainder":
        value, work = (d + k) % m, f"remainder: q{(d + k) // m} r{(d + k) % m}\n"  # no sum: no state shared
    else:
        raise ValueError(f"unknown way {way!r}; the ways are {', '.join(WAYS)}")
    if slip and rng.random() < slip:  # a copying slip in a, b or c: never right by luck
        i = rng.randrange(3)
        rest = rest[:i] + rng.choice([v for v in "0123456789" if v != rest[i]]) + rest[i + 1:]
    return work + f"\\boxed{{{pope_world.show(rest + str(value))}}}"


def way_of(text: str) -> str:
    """Which way a response took, by its first word ("direct" for a bare \\boxed, "other" for anything else)."""
    head = text.lstrip()
    return ("direct" if head.startswith("\\boxed") else "careful" if head.startswith("d:") else
            "count" if head.startswith("count:") else "remainder" if head.startswith("remainder:") else "other")


toy_reward = pope_world.toy_reward  # the one toy reward: exact match of the last \boxed{}, spaces removed


def split(n: int, seed: int, name: str, kinds: tuple[str, ...] | None = None) -> list[data.Problem]:
    """`n` problems, deterministic for (`seed`, `name`): drawn as they come (kinds None), or n / len(kinds) of each."""
    rng = random.Random(f"add4-{name}-{seed}")
    if kinds is None:
        return [make_problem(rng, pid=f"{name}-{seed}-{i}") for i in range(n)]
    return [make_problem(rng, kinds[i % len(kinds)], pid=f"{name}-{seed}-{i}") for i in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# The base model: a 10^4-token vocabulary, the ways' bodies, and their first-token shares
# ---------------------------------------------------------------------------------------------------------------

def filler_words(n: int, seed: int) -> list[str]:
    """Random lowercase words for the tokenizer only: their merges fill the vocabulary to 10^4 tokens, which no toy
    text uses, so the trained model gives them an LLM-like tail."""
    rng = random.Random(f"filler-{seed}")
    return [" ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(20))
            for _ in range(n)]


def first_token(tok, way: str) -> int:
    """The token a `way`'s answers start with (distinct for the four ways: checked in build_base_model)."""
    return tok.encode(answer(way, make_problem(random.Random(0)).problem), add_special_tokens=False)[0]


def warm_start_examples(tok, problems: list[data.Problem], rng: random.Random, body_frac: float = 0.5):
    """(prompt_ids, target_ids) pairs. With probability `body_frac` an example teaches a way's body: a way drawn
    uniformly, its first token moved into the prompt (so it is never a target), the rest the target. Otherwise it
    teaches the start: a way drawn by SHARES, the whole sloppy answer the target. Remainder's first token is therefore
    never a target: the base model can finish a remainder answer but does not start one."""
    out = []
    for p in problems:
        prompt = data.make_prompt(tok, p).prompt_ids
        body = rng.random() < body_frac
        way = rng.choice(WAYS) if body else rng.choices(list(SHARES), list(SHARES.values()))[0]
        ids = tok.encode(answer(way, p.problem, SLIP[way], rng), add_special_tokens=False) + [tok.eos_token_id]
        out.append((prompt + ids[:1], ids[1:]) if body else (prompt, ids))
    return out


def build_base_model(out_dir: str, seed: int = 0, *, n_train: int = 20_000, steps: int = 600, batch_size: int = 32,
                     lr: float = 2e-3, vocab_size: int = 10_000, hidden_size: int = 128, num_layers: int = 4,
                     force: bool = False, log_every: int = 100) -> str:
    """Tokenizer (byte-level BPE, `vocab_size` tokens) + tiny Qwen3 + warm-start on every kind, cached in `out_dir`
    like pope_world.build_base_model (settings in toy_build.json). Returns `out_dir`."""
    settings = dict(seed=seed, n_train=n_train, steps=steps, batch_size=batch_size, lr=lr, vocab_size=vocab_size,
                    hidden_size=hidden_size, num_layers=num_layers, shares=SHARES, slip=SLIP, version=7)
    marker = Path(out_dir) / "toy_build.json"
    if not force and marker.is_file() and json.loads(marker.read_text()).get("settings") == settings:
        return out_dir
    t0, rng = time.time(), random.Random(f"add4-warm-{seed}")
    problems = [make_problem(rng, rng.choice(list(KINDS)), pid=f"warm-{i}") for i in range(n_train)]
    corpus = [data.DEFAULT_SYSTEM_PROMPT, "system user assistant"] + [
        t for p in problems[:300] for t in (p.problem, *(answer(w, p.problem) for w in WAYS))]
    tok = tiny.make_tokenizer(corpus + filler_words(3000, seed), vocab_size, split_digits=True)
    firsts = [first_token(tok, w) for w in WAYS]
    if len(set(firsts)) < len(WAYS):
        raise RuntimeError(f"the ways' first tokens are not distinct: {tok.convert_ids_to_tokens(firsts)}")
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny.qwen3_config(tok, hidden_size, num_layers, 256))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    losses = tiny.warm_start(model, warm_start_examples(tok, problems, rng), steps=steps, batch_size=batch_size, lr=lr,
                             seed=seed, log_every=log_every, head_on_targets=True)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    marker.write_text(json.dumps(dict(settings=settings, n_params=sum(p.numel() for p in model.parameters()),
                                      final_loss=sum(losses[-20:]) / 20, seconds=round(time.time() - t0, 1)),
                                 indent=1))
    return out_dir


# ---------------------------------------------------------------------------------------------------------------
# Measures: the first token's distribution, the optima, the pulls, pass@k by kind
# ---------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def first_token_probs(model, prompts: list[data.Prompt]) -> torch.Tensor:
    """p(first response token | prompt) [P, V] in float64, from a transformers model (one prompt at a time: the
    prompts differ in length, and there are few)."""
    rows = [torch.log_softmax(model(input_ids=torch.tensor([p.prompt_ids])).logits[0, -1].double(), -1)
            for p in prompts]  # P x [V]
    return torch.stack(rows).exp()  # [P, V]


def first_token_stats(pi: torch.Tensor, ref: torch.Tensor, firsts: dict[str, int], alpha: float) -> dict:
    """What the first token's distribution pi [P, V] says against the reference's ref [P, V], means over prompts:
    each way's share; the mass and entropy off the reference's support (ref < OFF_SUPPORT); and the two KL terms'
    restoring pulls on count's logit z, -d(alpha KL)/dz (exact, per prompt):
        forward  -d/dz alpha KL(ref || pi) = alpha (ref - pi)
        reverse  -d/dz alpha KL(pi || ref) = -alpha pi (log(pi / ref) - KL(pi || ref))"""
    c = firsts["count"]
    kl_reverse = (pi * (pi.log() - ref.log())).sum(-1)  # [P]
    off = ref < OFF_SUPPORT  # [P, V]
    return {**{f"share_{w}": float(pi[:, t].mean()) for w, t in firsts.items()},
            "off_support_mass": float((pi * off).sum(-1).mean()),
            "entropy": float(-(pi * pi.log()).sum(-1).mean()),
            "pull_forward_count": float((alpha * (ref[:, c] - pi[:, c])).mean()),
            "pull_reverse_count": float((-alpha * pi[:, c] * (pi[:, c].log() - ref[:, c].log() - kl_reverse)).mean())}


def optima(ref: torch.Tensor, way_reward: dict[str, float], firsts: dict[str, int], alpha: float,
           beta: float) -> dict:
    """The first token's optimum under E[r] - alpha KL + beta H, forward (RAPO, prop33_root) and reverse (GRPO's
    direction, reverse_kl_optimum), on the mean reference distribution ref [P, V], with r(first token) = the measured
    reward of the way it starts and 0 for every other token (they start no answer). Each way's share and the mass
    off the reference's support (ref < OFF_SUPPORT) of both."""
    ref_mean = ref.mean(0).numpy()  # [V]
    r = np.zeros_like(ref_mean)
    for way, t in firsts.items():
        r[t] = way_reward[way]
    forward, _ = prop33_root(ref_mean, r, alpha, beta)
    reverse = reverse_kl_optimum(ref_mean, r, alpha, beta)
    off = ref_mean < OFF_SUPPORT
    return {name: {**{f"share_{w}": float(pi[t]) for w, t in firsts.items()}, "off_support_mass": float(pi[off].sum())}
            for name, pi in (("forward", forward), ("reverse", reverse))}


def way_rewards(engine, tok, problems: list[data.Problem], firsts: dict[str, int], n: int, max_tokens: int,
                seed: int) -> dict[str, float]:
    """Each way's mean reward on `problems`, from the engine's weights: n samples per problem after its first token
    is forced (appended to the prompt), stage BENCHMARK round 1 (round 0 is `measure`'s)."""
    out = {}
    for way, t in firsts.items():
        prompts = [data.Prompt(p, data.make_prompt(tok, p).prompt_ids + [t]) for p in problems]
        groups = evaluate.sample(engine, prompts, n, 1.0, max_tokens, seed=seed, stage=BENCHMARK, round_index=1)
        first = tok.decode([t])
        out[way] = float(np.mean([toy_reward(first + s.text, p) for p, g in zip(prompts, groups) for s in g]))
    return out


def pass_curve(scores: np.ndarray, k_max: int) -> dict[str, float]:
    """{"pass@k": mean over problems} for k = 1, 2, 4, ... up to k_max, from [P, n] rewards (unbiased estimator)."""
    n, correct = scores.shape[1], (scores > 0).sum(1)
    return {f"pass@{k}": float(np.mean([evaluate.pass_at_k(n, int(c), k) for c in correct]))
            for k in evaluate.powers_of_two(min(k_max, n))}


def measure(engine, prompts: list[data.Prompt], n: int, temperature: float, max_tokens: int, seed: int) -> dict:
    """pass@k by kind for k up to n / 4 (n >= 4k samples per problem: greedy is one sample, pass@1), each way's
    share of the answers by kind, and of the right answers (`right_by_<way>`: which ways a kind is solved by), from
    the engine's weights; stage BENCHMARK round 0, the same seeds for every arm."""
    n = 1 if temperature == 0 else n
    groups = evaluate.sample(engine, prompts, n, temperature, max_tokens, seed=seed, stage=BENCHMARK, round_index=0)
    scores = np.array([[toy_reward(s.text, p) for s in g] for g, p in zip(groups, prompts)])  # [P, n]
    ways = np.array([[way_of(s.text) for s in g] for g in groups])  # [P, n]
    kinds = np.array([kind_of(p.problem) for p in prompts])  # [P]
    k_max = max(1, n // 4)
    out = {"all": pass_curve(scores, k_max)}
    for kind in KINDS:
        if (kinds == kind).any():
            mine = kinds == kind
            right = scores[mine] > 0  # [P_kind, n]
            out[kind] = {**pass_curve(scores[mine], k_max),
                         **{f"share_{w}": float((ways[mine] == w).mean()) for w in (*WAYS, "other")},
                         **{f"right_by_{w}": float((right & (ways[mine] == w)).sum() / max(right.sum(), 1))
                            for w in (*WAYS, "other")}}
    return out


# ---------------------------------------------------------------------------------------------------------------
# The arms and the experiment
# ---------------------------------------------------------------------------------------------------------------

# What each arm adds to GRPO's loss (grpo.Config fields; phi_source is rapo.phi_rule's), and nothing else.
ARMS = {
    "grpo": lambda c: dict(kl_coef=0.0),
    "grpo-no-bonus": lambda c: dict(kl_coef=0.0, entropy_coef=0.0),
    "grpo-rkl": lambda c: dict(kl="reverse-exact", kl_coef=c.kl_coef),
    "grpo-fkl": lambda c: dict(kl="forward-exact", kl_coef=c.kl_coef),
    "rapo": lambda c: dict(kl="forward-exact", kl_coef=c.kl_coef, ref_nucleus=c.ref_nucleus, phi_source="sample"),
    "rapo-group": lambda c: dict(kl="forward-exact", kl_coef=c.kl_coef, ref_nucleus=c.ref_nucleus, phi_source="group"),
}


@dataclass
class RapoToyConfig:
    out_dir: str = opt("runs/rapo-toy", "base model, arms' runs, summary JSON and the PNG")
    seeds: str = opt("0", "comma-separated seeds: each draws its own train/eval problems and seeds every arm")
    base_model: str = opt("", "a base-model folder from build_base_model (default: built in --out-dir, ~3 minutes)")
    arms: str = opt("grpo-rkl,rapo", f"comma-separated arms from {', '.join(ARMS)}, or all [this project's: "
                    "GRPO with its usual reverse KL against RAPO, the paper's comparison, within 10 minutes; the "
                    "table's all six take ~25 minutes a seed at --eval-samples 256, 38 with the decoding sweep]")
    n_train: int = opt(256, "training problems (K 3, M 10: plain and wrap, as drawn)")
    n_eval: int = opt(64, "held-out problems, the same number of each kind (plain, wrap, mod8, add13)")
    eval_samples: int = opt(64, "samples per held-out problem at each sampled temperature: pass@k for k = 1, 2, "
                            "4 ... up to a quarter of this (n >= 4k) [this project's: 64 within 10 minutes; the "
                            "table's: 256]")
    steps: int = opt(24, "training steps per arm")
    measure_every: int = opt(8, "the first token's distribution and the pulls every this many steps (a divisor of "
                             "--steps: training runs in segments that resume from the last checkpoint)")
    prompts_per_step: int = opt(32, "prompts per step")
    group_size: int = opt(8, "samples per prompt")
    lr: float = opt(5e-4, "AdamW learning rate of every arm [this project's, v1's: a 0.7 M-parameter body]")
    kl_coef: float = opt(0.3, "alpha, the KL weight of the KL arms [this project's, v1's]")
    entropy_coef: float = opt(0.03, "beta, the entropy bonus of every arm [this project's: beta / alpha = 0.1, where "
                              "the forward KL's optimum leaves the support]")
    ref_phi_min: float = opt(0.5, "RAPO's phi = phi_min + (1 - phi_min) r [as rapo.py]")
    ref_nucleus: float = opt(0.01, "RAPO arms: tokens with ref >= this x max ref are reweighted [this project's: "
                             "careful, 4%% against direct's 95.5%%, is inside; rapo.py's 0.1 would leave it out]")
    temperatures: str = opt("1.0", "the held-out set's decoding sweep, comma-separated (0 = greedy; the table's: "
                            "0,0.6,1.0); T 1, the training temperature, must be among them")
    max_new_tokens: int = opt(32, "response budget [this project's: the longest answer, careful's, is 30 tokens and "
                              "the end token]")
    way_samples: int = opt(16, "samples per training problem and way for each way's measured reward (the optima)")
    merge: str = opt("", "comma-separated summary.json files of earlier runs (one seed each, say, run side by side): "
                     "their seeds' table and plot, written in --out-dir, instead of running")


def arm_config(cfg: RapoToyConfig, arm: str, base_dir: str, seed: int, steps: int) -> tuple[grpo.Config, object]:
    """One arm's grpo.Config for a training segment that ends at `steps`, and its ref_sharpness (rapo.phi_rule)."""
    knobs = {"entropy_coef": cfg.entropy_coef, **ARMS[arm](cfg)}  # an arm may override the bonus (grpo-no-bonus)
    source = knobs.pop("phi_source", None)
    phi = rapo.phi_rule(cfg.ref_phi_min, source) if source else None  # None: the plain reference
    return grpo.Config(model=base_dir, out_dir=str(Path(cfg.out_dir) / f"seed{seed}" / arm), steps=steps, seed=seed,
                       prompts_per_step=cfg.prompts_per_step, group_size=cfg.group_size, temperature=1.0,
                       max_new_tokens=cfg.max_new_tokens, max_model_len=256, lr=cfg.lr, adv_std_norm=False,
                       micro_batch_size=128, log_samples=1, resume=steps > cfg.measure_every, **knobs), phi


def measure_all(engine, held_out, cfg: RapoToyConfig, seed: int) -> dict:
    """The decoding sweep on the held-out set, at each of --temperatures (0: greedy)."""
    return {f"T{float(t)}": measure(engine, held_out, cfg.eval_samples, float(t), cfg.max_new_tokens, seed)
            for t in cfg.temperatures.split(",")}


def run_seed(cfg: RapoToyConfig, arms: list[str], base_dir: str, engine, tok, seed: int) -> dict:
    """The base model and every arm for one seed."""
    train_problems = split(cfg.n_train, seed, "train")
    train = [data.make_prompt(tok, p) for p in train_problems]
    held_out = [data.make_prompt(tok, p) for p in split(cfg.n_eval, seed, "eval", tuple(KINDS))]
    watched = {kind: [p for p in train if kind_of(p.problem) == kind][:16] for kind in TRAIN_KINDS}
    base_model = AutoModelForCausalLM.from_pretrained(base_dir)
    firsts = {w: first_token(tok, w) for w in WAYS}
    ref = {kind: first_token_probs(base_model, ps) for kind, ps in watched.items()}  # kind: [P, V]
    engine.sync_weights(base_model.named_parameters(remove_duplicate=False))
    rewards = {kind: way_rewards(engine, tok, [p.problem for p in ps], firsts, cfg.way_samples, cfg.max_new_tokens,
                                 seed) for kind, ps in watched.items()}
    train_share = {k: sum(kind_of(p) == k for p in train_problems) / len(train_problems) for k in TRAIN_KINDS}
    mixed = {w: sum(train_share[k] * rewards[k][w] for k in TRAIN_KINDS) for w in WAYS}
    results = {"base": {"pass": measure_all(engine, held_out, cfg, seed),
                        "first_token": {k: first_token_stats(ref[k], ref[k], firsts, cfg.kl_coef) for k in ref},
                        "way_rewards": {**rewards, "train": mixed},
                        "optima": {k: optima(ref[k], rewards[k], firsts, cfg.kl_coef, cfg.entropy_coef) for k in ref}}}
    print(f"rapo toy seed {seed}: base model: {summary_line(results['base'])}", flush=True)
    print(f"rapo toy seed {seed}: ways' rewards {json.dumps(rewards)}; optima {json.dumps(results['base']['optima'])}",
          flush=True)
    for arm in arms:
        t, history, curve = time.time(), [], []
        for end in range(cfg.measure_every, cfg.steps + 1, cfg.measure_every):
            arm_cfg, phi = arm_config(cfg, arm, base_dir, seed, end)
            history += grpo.train(arm_cfg, train, toy_reward, engine=engine, ref_sharpness=phi)
            policy = AutoModelForCausalLM.from_pretrained(grpo.latest_checkpoint(arm_cfg.out_dir) / "hf",
                                                          dtype=torch.float32)
            curve.append({"step": end, **{k: first_token_stats(first_token_probs(policy, ps), ref[k], firsts,
                                                               cfg.kl_coef) for k, ps in watched.items()}})
        results[arm] = {"pass": measure_all(engine, held_out, cfg, seed), "first_token": curve,
                        "entropy": [h["entropy"] for h in history], "reward": [h["reward"] for h in history],
                        "rollouts": sum(h["samples"] for h in history),
                        "sampled_tokens": sum(h["sampled_tokens"] for h in history),
                        "seconds": round(time.time() - t, 1)}
        print(f"rapo toy seed {seed}: {arm}: {summary_line(results[arm])} ({results[arm]['seconds']:.0f} s)",
              flush=True)
    return results


def summary_line(r: dict) -> str:
    p = r["pass"]["T1.0"]
    top = max(int(k.split("@")[1]) for k in p["all"])
    first = r["first_token"] if isinstance(r["first_token"], dict) else r["first_token"][-1]
    return (f"pass@1 {p['all']['pass@1']:.3f}  pass@{top}: " + " ".join(
        f"{kind} {p[kind][f'pass@{top}']:.2f}" for kind in KINDS if kind in p)
            + f"  first token on train: count {first['plain']['share_count']:.1e}, remainder "
              f"{first['plain']['share_remainder']:.1e}, off-support {first['plain']['off_support_mass']:.1e}")


def spread(values) -> list[float]:
    values = [float(v) for v in values]
    return [float(np.mean(values)), min(values), max(values)]


def table(per_seed: dict[int, dict]) -> dict[str, dict]:
    """{arm: {column: [mean, min, max]}} over seeds: pass@1 on the training kinds and on wrap, pass@k at the largest
    k on mod8 and add13 (T 1), pass@1 at the other temperatures, careful's share of the answers on wrap, and the
    first token at the end on wrap training problems: count's and remainder's shares and the off-support mass."""
    runs = list(per_seed.values())
    top = max(int(k.split("@")[1]) for k in runs[0]["base"]["pass"]["T1.0"]["all"])
    swept = [t for t in runs[0]["base"]["pass"] if t != "T1.0" and all(t in r["base"]["pass"] for r in runs)]
    out = {}
    for arm in runs[0]:
        def col(get):  # over the seeds that ran the arm (a merged table may hold an arm on fewer seeds)
            return spread(get(r[arm]) for r in runs if arm in r)

        def first(r):  # the first token on wrap training problems: the base model's, or at the arm's last step
            return r["first_token"]["wrap"] if arm == "base" else r["first_token"][-1]["wrap"]

        t1 = lambda r: r["pass"]["T1.0"]  # noqa: E731
        out[arm] = {
            "pass@1 train": col(lambda r: (t1(r)["plain"]["pass@1"] + t1(r)["wrap"]["pass@1"]) / 2),
            "pass@1 wrap": col(lambda r: t1(r)["wrap"]["pass@1"]),
            **{f"pass@{top} {kind}": col(lambda r, kind=kind: t1(r)[kind][f"pass@{top}"])
               for kind in ("mod8", "add13")},
            **{f"pass@1 {t}": col(lambda r, t=t: r["pass"][t]["all"]["pass@1"])
               for t in swept},  # the temperatures every seed ran
            "careful on wrap": col(lambda r: t1(r)["wrap"]["share_careful"]),
            "count first": col(lambda r: first(r)["share_count"]),
            "remainder first": col(lambda r: first(r)["share_remainder"]),
            "off-support": col(lambda r: first(r)["off_support_mass"]),
        }
    return out


def print_table(summary: dict, seeds: int) -> None:
    over = f"mean [min, max] over {seeds} seeds" if seeds > 1 else "one seed"
    columns = list(next(iter(summary.values())))
    cell = (lambda v: f"{v[0]:.3g} [{v[1]:.3g}, {v[2]:.3g}]") if seeds > 1 else (lambda v: f"{v[0]:.3g}")
    width = max(len(c) for c in columns) + 2
    width = max(width, *(len(cell(v)) + 2 for row in summary.values() for v in row.values()))
    print(f"\nheld-out problems at T 1 unless named; the first token on wrap training problems; {over}")
    print(f"{'':<11}" + "".join(f"{c:>{width}}" for c in columns))
    for arm, row in summary.items():
        print(f"{arm:<11}" + "".join(f"{cell(row[c]):>{width}}" for c in columns))


def run(cfg: RapoToyConfig) -> dict:
    """Every seed's arms; summary.json ({"seeds", "table"}), the table, and the plot."""
    if cfg.merge:
        per_seed, settings = merge(cfg.merge.split(","))
        return report(RapoToyConfig(**{**vars(cfg), **settings}), per_seed)
    arms = list(ARMS) if cfg.arms == "all" else cfg.arms.split(",")
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise ConfigError(f"--arms: unknown {', '.join(sorted(unknown))}; choose from {', '.join(ARMS)}")
    if cfg.eval_samples < 4 or cfg.eval_samples & (cfg.eval_samples - 1):
        raise ConfigError(f"--eval-samples {cfg.eval_samples}: a power of two >= 4 (pass@k up to a quarter of it)")
    if cfg.steps % cfg.measure_every:
        raise ConfigError(f"--measure-every {cfg.measure_every} must divide --steps {cfg.steps}")
    if 1.0 not in [float(t) for t in cfg.temperatures.split(",")]:
        raise ConfigError(f"--temperatures {cfg.temperatures}: must include 1.0 (the table and plot are at T 1)")
    if cfg.n_eval % len(KINDS):
        raise ConfigError(f"--n-eval {cfg.n_eval}: a multiple of {len(KINDS)} (the same number of each kind)")
    t0 = time.time()
    base_dir = cfg.base_model or build_base_model(str(Path(cfg.out_dir) / "base-model"))
    print(f"rapo toy: base model ready in {time.time() - t0:.0f} s", flush=True)
    tok = AutoTokenizer.from_pretrained(base_dir)
    engine = make_engine(grpo.Config(model=base_dir, max_model_len=256), 1)
    seeds = [int(s) for s in cfg.seeds.split(",")]
    per_seed = {seed: run_seed(cfg, arms, base_dir, engine, tok, seed) for seed in seeds}
    del engine  # vLLM's teardown resets process-wide state: run it now (see pope_compare.run)
    gc.collect()
    summary = report(cfg, per_seed)
    print(f"rapo toy: {time.time() - t0:.0f} s")
    return summary


MERGE_MAY_DIFFER = ("out_dir", "seeds", "base_model", "arms", "temperatures", "merge")  # what --merge lets differ


def merge(paths: list[str]) -> tuple[dict[int, dict], dict]:
    """The seeds of several summary.json files, one table's worth, and their shared settings: a seed in two files, or
    files run with different settings (other than which seeds, arms and temperatures, and where), are an error."""
    per_seed, settings = {}, None
    for path in paths:
        if not Path(path).is_file():
            raise ConfigError(f"--merge: no file {path} (a summary.json of an earlier run)")
        try:
            summary = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"--merge: {path} is not JSON ({e})") from None
        if not isinstance(summary, dict) or not isinstance(summary.get("seeds"), dict) or not isinstance(summary.get("config"), dict):
            raise ConfigError(f"--merge: {path} has no \"seeds\" and \"config\": not a rapo_world summary.json")
        mine = {k: v for k, v in summary["config"].items() if k not in MERGE_MAY_DIFFER}
        unknown = set(mine) - set(RapoToyConfig.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"--merge: {path} ran with settings this version lacks: {', '.join(sorted(unknown))}")
        settings = mine if settings is None else settings
        for key in sorted(set(settings) | set(mine)):
            if settings.get(key) != mine.get(key):
                raise ConfigError(f"--merge: {path} ran with {key} {mine.get(key)!r}, an earlier file with "
                                  f"{settings.get(key)!r}: a table's seeds differ only in their seed")
        for seed, results in summary["seeds"].items():
            if int(seed) in per_seed:
                raise ConfigError(f"--merge: seed {seed} is in {path} and in an earlier file; give each seed once")
            per_seed[int(seed)] = results
    return per_seed, settings


def report(cfg: RapoToyConfig, per_seed: dict[int, dict]) -> dict:
    """summary.json ({"config", "seeds", "table"}), the printed table, and the plot, in --out-dir."""
    summary = {"config": vars(cfg), "seeds": per_seed, "table": table(per_seed)}
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    Path(cfg.out_dir, "summary.json").write_text(json.dumps(summary, indent=1))
    print_table(summary["table"], len(per_seed))
    plot(per_seed, cfg, Path(cfg.out_dir) / "rapo_toy.png")
    print(f"rapo toy: summary {cfg.out_dir}/summary.json, plot {cfg.out_dir}/rapo_toy.png")
    return summary


def plot(per_seed: dict[int, dict], cfg: RapoToyConfig, path: Path) -> None:
    """Left: pass@k against k (log axis) on mod8 and add13, mean over seeds. Middle: count's first-token share on plain
    training problems during training (log axis). Right: remainder's share on wrap training problems, with the
    computed optima of both KL directions there."""
    import matplotlib  # here: matplotlib is needed only to draw, and slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(per_seed.values())
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4))
    ks = [int(k.split("@")[1]) for k in runs[0]["base"]["pass"]["T1.0"]["all"]]
    for i, arm in enumerate(runs[0]):
        color, ran = "k" if arm == "base" else f"C{i}", [r for r in runs if arm in r]  # the seeds that ran the arm
        for kind, style in (("mod8", "-"), ("add13", ":")):
            left.plot(ks, [np.mean([r[arm]["pass"]["T1.0"][kind][f"pass@{k}"] for r in ran]) for k in ks],
                      style, color=color, marker="o", label=f"{arm} ({kind})" if kind == "mod8" or arm == "base"
                      else None)
        for ax, share, kind in ((middle, "share_count", "plain"), (right, "share_remainder", "wrap")):
            start = np.mean([r["base"]["first_token"][kind][share] for r in runs])
            if arm == "base":
                ax.axhline(start, color="k", linestyle="--", label="reference")
                continue
            steps = [0] + [c["step"] for c in runs[0][arm]["first_token"]]
            values = [start] + [np.mean([r[arm]["first_token"][j][kind][share] for r in ran])
                                for j in range(len(steps) - 1)]
            ax.plot(steps, values, color=color, marker="o", label=arm)
    for name, style in (("forward", "-."), ("reverse", ":")):
        right.axhline(np.mean([r["base"]["optima"]["wrap"][name]["share_remainder"] for r in runs]), color="grey",
                      linestyle=style, label=f"optimum, {name} KL")
    left.set(xscale="log", xlabel="k", ylabel="pass@k", ylim=(-0.02, 1.02),
             title="held-out mod8 (solid) and add13 (dotted)")
    left.set_xticks(ks, [str(k) for k in ks])
    left.minorticks_off()
    middle.set(yscale="log", xlabel="training step", ylabel="p(first token = count)",
               title="count (in the support), plain problems")
    right.set(yscale="log", xlabel="training step", ylabel="p(first token = remainder)",
              title="remainder (off the support), wrap problems")
    for ax in (left, middle, right):
        ax.legend(fontsize=7)
    fig.suptitle(f"RAPO toy v3, {len(runs)} seed(s), alpha {cfg.kl_coef}, beta {cfg.entropy_coef}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    command_line(RapoToyConfig, run, argv)


if __name__ == "__main__":
    main()
