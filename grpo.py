"""GRPO: group-relative policy optimisation with vLLM rollouts. The loss, and the training step top to bottom.

    python grpo.py --model Qwen/Qwen3-4B-Instruct-2507 --data train.jsonl          # one process
    torchrun --nproc_per_node=8 grpo.py --model Qwen/Qwen3-4B-Instruct-2507 --data train.jsonl

One step (`train`, read top to bottom): sample prompts -> vLLM rollouts (a group of G per prompt) -> rewards -> group
advantages, the sequences as tensors (`rollout_tensors`) -> clipped policy-gradient loss and optimizer step(s) on the
trainer model (`update`) -> push the new weights into vLLM (`sync`) -> metrics over all ranks (`step_metrics`) -> log.

The loss, per completion token t of sequence i (prompt tokens, including a POPE guiding prefix, carry no loss):

    A_i     = r_i - mean_group(r)                      [/ (std_group(r) + eps) with --adv-std-norm]   (GRPO; Dr.GRPO off)
    rho_t   = pi_theta(y_t | s_t) / pi_old(y_t | s_t)
    L_t     = -min(rho_t A_i, clip(rho_t, 1 - eps_low, 1 + eps_high) A_i)                              (PPO; DAPO clip-higher)
              + kl_coef * KL_t - entropy_coef * H(pi_theta(. | s_t))
              + kl_cov_coef * |log rho_t|, on the top kl_cov_ratio of tokens by Cov_t only  (KL-Cov; off)
    loss    = sum_t w_t L_t          with the per-token weight w_t set by --loss-agg (token-mean, seq-mean-token-mean, ...)

Options come from: GRPO (DeepSeekMath, arXiv 2402.03300), DAPO (arXiv 2503.14476: clip-higher, token-mean),
Dr.GRPO (arXiv 2503.20783: no std, constant normaliser), KL-Cov (arXiv 2505.22617), Schulman's KL estimators
(joschu.net/blog/kl-approx.html; which KL direction each one's gradient follows is in `kl_term`), the POPE authors'
PipelineRL config (sum over tokens / sequences per step), RAPO (arXiv 2510.03865: forward KL to a reward-reweighted
reference). docs/algorithms.md has the provenance of each.

Logprobs are computed only at completion positions and in chunks of positions (`token_stats`), so peak memory is
(chunk x vocab), not (response length x vocab): at Qwen's 151,936-token vocabulary a 16k-token response would need
~10 GB for one fp32 log_softmax.

Deliberately left out: a value model (GRPO needs none), asynchronous / off-policy rollouts (every rollout comes from
the current weights; the PPO ratio matters only with --minibatches > 1), dynamic sampling (zero-std groups are kept
and simply contribute no gradient), learning-rate warmup, and importance correction of the small
vLLM-vs-trainer logprob gap (it is the health metric of the weight sync instead: logged every step, and a step whose
mean gap passes --max-logprob-gap stops the run, `check_health`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

import data
import evaluate
import reward
from common import (ConfigError, HealthError, check_device, check_model_path, command_line, compute_dtype,
                    init_distributed, opt, reduce_sums, request_seed, versions)
from rollout import Engine, check_context, make_engine


KL_CHOICES = ["reverse-k2", "reverse-exact", "forward-k3", "forward-exact"]  # `kl_term` has the formulas

@dataclass
class Config:
    # what to train on (system_prompt and bad_gold first: the `data` field below shadows the module inside this
    # class body)
    system_prompt: str = opt(data.DEFAULT_SYSTEM_PROMPT, "system turn of every prompt ('' for none)")
    bad_gold: str = opt("stop", "a problem whose gold answer scores 0 against itself boxed (no response could earn "
                        "reward on it): stop the run naming file:row, or drop it with a warning",
                        choices=list(data.BAD_GOLD_POLICIES))
    model: str = opt("", "HF model id or local folder (policy, reference, and the vLLM engine's starting weights)")
    data: str = opt("", "problems: a .jsonl/.parquet file with 'problem' and 'answer' columns, or a dataset name "
                    "from data.DATASETS (e.g. omni-math, dapo-math-17k, pope-hard)")
    out_dir: str = opt("runs/grpo", "where metrics.jsonl, samples.jsonl and the final HF checkpoint go")
    # rollouts
    steps: int = opt(100, "optimizer steps (x --minibatches) to run")
    prompts_per_step: int = opt(32, "prompts per step over all ranks; each gets its own group (POPE config: 32)")
    group_size: int = opt(8, "completions sampled per prompt, G (POPE config: 8)")
    temperature: float = opt(1.0, "sampling temperature; the trainer divides its logits by the same value")
    max_new_tokens: int = opt(1024, "completion budget per sample")
    max_model_len: int = opt(4096, "vLLM context: longest prompt + max_new_tokens must fit")
    # advantages and loss
    adv_std_norm: bool = opt(True, "divide r - mean by the group's std (GRPO); off = Dr.GRPO / POPE authors' config")
    adv_eps: float = opt(1e-6, "eps in (r - mean) / (std + eps); std is the population std of the group")
    eps_low: float = opt(0.2, "lower clip: ratio >= 1 - eps_low for negative advantages (PPO/GRPO 0.2); acts only "
                         "with --minibatches > 1 (with one, the ratio is exactly 1)")
    eps_high: float = opt(0.2, "upper clip: ratio <= 1 + eps_high for positive advantages (GRPO 0.2, DAPO 0.28 "
                          "clip-higher); acts only with --minibatches > 1, e.g. --eps-high 0.28 --minibatches 4")
    loss_agg: str = opt("token-mean", "how token losses are averaged: token-mean (DAPO) | seq-mean-token-mean "
                        "(GRPO) | seq-mean-token-sum-norm (Dr.GRPO, / (sequences x max_new_tokens); verl's mode "
                        "of that name divides by max length only, no 1 / sequences, so its scale depends on the "
                        "batch per GPU) | sum "
                        "(/ sequences per step; POPE authors' PipelineRL config)",
                        choices=["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "sum"])
    kl: str = opt("reverse-k2", "KL term, named for what its GRADIENT optimises (expected over sampled tokens): "
                  "reverse-k2 and reverse-exact follow KL(pi || ref) (GRPO's intent), forward-k3 and forward-exact "
                  "KL(ref || pi) (RAPO). forward-k3 is GRPO's published k3 term (DeepSeekMath): its value estimates "
                  "the reverse KL, its gradient is the forward KL's. *-exact sum over the vocabulary at each position",
                  choices=KL_CHOICES)
    kl_coef: float = opt(0.0, "weight of the KL term; 0 loads no reference model (DeepSeekMath 0.04, POPE 0)")
    kl_log_ratio_clamp: float = opt(5.0, "bound B on log u = log(ref/pi) in the sampled KL terms: past it a token's "
                                    "pull saturates (k2's coefficient at B, k3's at e^B - 1 = 147) instead of "
                                    "growing without bound, never drops to 0; the fraction of tokens past it is "
                                    "kl_clamp_frac (PipelineRL's bound 5; verl clamps k3's value at 10, which zeroes "
                                    "its gradient once ref/pi > 13.6)")
    ref_nucleus: float = opt(0.1, "a tempered reference ref^s (RAPO's, rapo.py): only tokens with ref >= this x max "
                             "ref are tempered, the rest keep the reference's mass (0 = the whole vocabulary, ref^s / "
                             "Z: at 151,936 tokens ~90% of the mass goes to junk at s 0.5; 0.1 keeps tail and entropy "
                             "within bounds for every s, bench/bench_reweighting.py) [this project's]")
    ref_hat_max_tail: float = opt(0.01, "stop the run when a tempered (RAPO) reference's mean mass on tokens the "
                                  "reference gives < 1e-4 exceeds this (logged as ref_hat_tail) [this project's]")
    ref_hat_max_entropy_gain: float = opt(0.5, "stop the run when a tempered (RAPO) reference's mean entropy exceeds "
                                          "the reference's by more than this many nats (ref_hat_entropy_gain) "
                                          "[this project's]")
    entropy_coef: float = opt(0.0, "entropy bonus weight, exact over the vocabulary (POPE 1e-4, SimpleRL 1e-3)")
    kl_cov_ratio: float = opt(0.0, "KL-Cov entropy-collapse control: this fraction of each micro-batch's tokens, "
                              "those of largest Cov_t = (logp_t - mean logp)(A_t - mean A), gets the penalty "
                              "kl_cov_coef * |logp_t - old_logp_t| (verl's default 2e-4, its recipes 1e-3; 0 = off)")
    kl_cov_coef: float = opt(1.0, "KL-Cov's penalty weight (verl's KL-Cov recipes: 1; its PolicyLossConfig default "
                             "ppo_kl_coef is 0.1); acts only with --minibatches > 1")
    # optimisation
    lr: float = opt(1e-6, "AdamW learning rate (POPE config: 1e-6)")
    lr_schedule: str = opt("constant", "learning rate over the run: constant, or cosine: lr (1 + cos(pi step / H)) / "
                           "2 with H = --lr-decay-steps, no warmup", choices=["constant", "cosine"])
    lr_decay_steps: int = opt(0, "the cosine's horizon H: the step at which it reaches 0 (0 = --steps: to 0 over "
                              "the run; the POPE authors' 100000, their max_train_steps, is ~constant over a short "
                              "run)")
    weight_decay: float = opt(0.0, "AdamW weight decay (POPE config: 0.01)")
    max_grad_norm: float = opt(1.0, "clip the global gradient norm to this (POPE config: 0.3)")
    minibatches: int = opt(1, "optimizer steps per rollout batch; > 1 makes the PPO ratio and clip active")
    micro_batch_size: int = opt(8, "sequences per forward/backward pass on each rank (at most)")
    micro_batch_tokens: int = opt(0, "with > 0, micro-batches by a token budget: each minibatch's sequences sorted by "
                                  "length, longest first, packed while (sequences x the longest) <= this many padded "
                                  "tokens and <= --micro-batch-size sequences, so short sequences share a pass "
                                  "instead of padding to a long one (the loss is the same: bench/bench_padding.py); "
                                  "0 = consecutive groups of --micro-batch-size [this project's]")
    logprob_chunk: int = opt(512, "completion positions per chunk of logits (peak memory ~ chunk x vocab; "
                             "bench/bench_logprobs.py: 512 of 2048 tokens uses ~15x less than whole logits)")
    grad_checkpointing: bool = opt(False, "recompute decoder layers in backward (long responses on GPU)")
    # system
    allow_cpu: bool = opt(False, "start even when a model of more than 100 M parameters finds no CUDA device (by "
                          "default that stops at once, naming what torch sees: a 4B run on CPU would take weeks) "
                          "[this project's]")
    dtype: str = opt("auto", "compute dtype of vLLM and the trainer: auto = bfloat16 on GPU, float32 on CPU; "
                     "master weights and optimizer state are always float32", choices=["auto", "bfloat16", "float32"])
    seed: int = opt(0, "seeds data order, vLLM sampling (per step and prompt) and torch")
    dist_timeout_minutes: float = opt(240.0, "torchrun: how long a collective waits for the slowest rank before the "
                                      "job fails (torch's nccl default, 10, is shorter than one rank sampling long "
                                      "responses alone); raise it for POPE's --mine at the authors' 32k x 128")
    vllm_gpu_memory_utilization: float = opt(0.35, "fraction of GPU memory the vLLM engine takes (weights + KV)")
    vllm_kv_cache_bytes: int = opt(0, "explicit KV-cache size in bytes; 0 = from utilization (CPU default 64 MiB)")
    sleep_level: int = opt(0, "vLLM sleep during training: 0 off, 1 offload weights to CPU, 2 discard them",
                           choices=[0, 1, 2])
    vllm_log_level: str = opt("WARNING", "vLLM's own logging: WARNING keeps a step's output to the bar, the sample "
                              "rollouts and the metrics; INFO restores vLLM's start-up and progress lines",
                              choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    max_logprob_gap: float = opt(0.0, "stop the run when the mean |vLLM - trainer| logprob of the sampled tokens "
                                 "exceeds this (the weight sync is broken); 0 = by --dtype: float32 1e-3 (CPU "
                                 "measures ~1e-6), bfloat16 0.1 (an estimate, not yet measured on a GPU) "
                                 "[this project's]")
    reward_workers: int = opt(0, "processes for reward scoring (0 = in this process)")
    reward_timeout: float = opt(10.0, "seconds before a reward call is abandoned and scored 0")
    log_samples: int = opt(2, "rollouts printed per step")
    wandb_project: str = opt("", "also log every step's metrics (those of metrics.jsonl) to this Weights & Biases "
                             "project, from rank 0; '' = off, and wandb is not imported (WANDB_MODE=offline: no "
                             "network)")
    eval_every: int = opt(0, "every this many steps, measure solvability of the eval prompts (0 = never)")
    eval_k: int = opt(8, "samples per eval prompt: solvable = at least one of k correct (POPE: pass@8)")
    eval_top_p: float = opt(1.0, "nucleus sampling of the solvability eval (1 = off, the training sampler; "
                            "evaluate.py's default is the POPE authors' eval sampler, 0.95)")
    eval_top_k: int = opt(0, "top-k sampling of the solvability eval (0 = off; evaluate.py's default: 50)")
    eval_data: str = opt("", "problems whose unguided solvability is measured every --eval-every steps: a name in "
                         "data.DATASETS (e.g. pope-hard), a .jsonl/.parquet file, or a Hub id (as in evaluate.py)")
    save_every: int = opt(0, "write a checkpoint every this many steps (0 = only after the last step)")
    resume: bool = opt(False, "continue from the latest checkpoint in --out-dir (same config, same world size)")


# ----------------------------------------------------------------------------------------------------------------
# The loss: pure tensor functions (torch only, no model, no config), in the order a step uses them


def group_advantages(rewards: torch.Tensor, std_norm: bool, eps: float) -> torch.Tensor:
    """A_i = r_i - mean(r) over each group (row), optionally / (std(r) + eps), with the population std.

    >>> group_advantages(torch.tensor([[1., 0., 0., 1.], [1., 1., 1., 1.]]), std_norm=False, eps=1e-6)
    tensor([[ 0.5000, -0.5000, -0.5000,  0.5000],
            [ 0.0000,  0.0000,  0.0000,  0.0000]])
    """
    adv = rewards - rewards.mean(dim=1, keepdim=True)  # [B, G]
    if std_norm:
        adv = adv / (rewards.std(dim=1, keepdim=True, unbiased=False) + eps)  # [B, G]
    return adv


def reweighted_reference(ref_logp: torch.Tensor, sharpness: torch.Tensor, nucleus: float) -> torch.Tensor:
    """The reference tempered to a sharpness s at each position (RAPO's reward-aware reference, s = phi(reward) from
    rapo.py): log ref_hat [n, V] from log ref [n, V] and s [n] in (0, 1].

    Inside the reference's own nucleus, the tokens v with ref(v) >= nucleus * max ref, ref_hat is ref^s tempered
    and renormalised to the nucleus's own mass; outside it ref_hat = ref:

        ref_hat(v) = ref(N) ref(v)^s / sum_{w in N} ref(w)^s   for v in N,      ref(v) otherwise.

    s = 1 is the plain reference; s -> 0 spreads the nucleus's mass evenly over its tokens. The tail keeps exactly
    the reference's share whatever s is. Over the whole vocabulary (nucleus = 0) ref^s / Z lifts every token the
    reference rules out: at Qwen's 151,936 tokens with tail log-probs near -20, ref^0.5 / Z puts ~90% of a
    position's mass on them (bench/bench_reweighting.py), and a failed sample then pulls the policy towards junk.

    >>> ref = torch.tensor([[0.6, 0.3, 0.05, 0.05]]).log()                 # N = {0.6, 0.3}: 0.05 < 0.1 * 0.6
    >>> reweighted_reference(ref, torch.tensor([1e-9]), nucleus=0.1).exp()  # s -> 0: N's 0.9 spread evenly
    tensor([[0.4500, 0.4500, 0.0500, 0.0500]])
    """
    inside = ref_logp >= ref_logp.max(-1, keepdim=True).values + math.log(nucleus) if nucleus > 0 else \
        torch.ones_like(ref_logp, dtype=torch.bool)  # [n, V] the nucleus N
    masked = ref_logp.masked_fill(~inside, -math.inf)  # [n, V] log ref on N only
    tempered = (sharpness[:, None].to(ref_logp.dtype) * ref_logp).masked_fill(~inside, -math.inf)  # [n, V] s log ref
    log_hat = tempered - tempered.logsumexp(-1, keepdim=True) + masked.logsumexp(-1, keepdim=True)  # [n, V] on N
    return torch.where(inside, log_hat, ref_logp)  # [n, V]


REF_TAIL_BELOW = 1e-4  # `ref_hat_tail` counts the tokens the plain reference gives less than this


def _logits(h, head, temperature):
    """Logits / T [n, V] of hidden states h [n, H], in float32 at least."""
    logits = h @ head.T  # [n, V]
    return logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature  # bf16 -> fp32, fp64 stays


def _chunk_stats(h, y, ref_h=None, sharpness=None, *, head, ref_head, temperature, nucleus):
    """`token_stats` of one chunk of positions, as a tuple in the order of its names."""
    logp_all = torch.log_softmax(_logits(h, head, temperature), dim=-1)  # [n, V]
    logp = logp_all.gather(-1, y[:, None])[:, 0]  # [n]
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # [n]
    if ref_h is None:
        return logp, entropy
    ref_all = torch.log_softmax(_logits(ref_h, ref_head, temperature), dim=-1)  # [n, V]
    plain, reweighting = ref_all, ()
    if sharpness is not None:  # RAPO: ref_hat in place of ref
        ref_all = reweighted_reference(plain, sharpness, nucleus)  # [n, V]
    ref_probs = ref_all.exp()  # [n, V]
    if sharpness is not None:  # what the tempering did to the reference
        tail = (ref_probs * (plain < math.log(REF_TAIL_BELOW))).sum(-1)  # [n]
        gain = torch.special.entr(ref_probs).sum(-1) - torch.special.entr(plain.exp()).sum(-1)  # [n] H(ref_hat)-H(ref)
        reweighting = (tail, gain)
    ref_logp = ref_all.gather(-1, y[:, None])[:, 0]  # [n]
    kl_forward = (ref_probs * (ref_all - logp_all)).sum(-1)  # [n] KL(ref || pi) at this position
    kl_reverse = (logp_all.exp() * (logp_all - ref_all)).sum(-1)  # [n] KL(pi || ref) at this position
    return (logp, entropy, ref_logp, kl_forward, kl_reverse) + reweighting


def token_stats(hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor, temperature: float,
                chunk_size: int, ref_hidden: torch.Tensor | None = None, ref_head: torch.Tensor | None = None,
                ref_sharpness: torch.Tensor | None = None, ref_nucleus: float = 0.0) -> dict[str, torch.Tensor]:
    """Per-token statistics of the policy (and the reference) at N completion positions.

    hidden [N, H] are the final hidden states that predict `targets` [N]; head [V, H] is the output embedding.
    Logits are formed for at most `chunk_size` positions at a time, and under autograd each chunk is checkpointed,
    so the backward pass recomputes its logits instead of keeping them: peak memory ~ chunk_size x V.

    Returns `logp` and `entropy` [N] of pi_theta = softmax(logits / T); with a reference also `ref_logp` [N] (the
    sampled token under the reference) and the exact KLs at each position, over the whole vocabulary:
        kl_forward [N] = sum_v ref(v) (log ref(v) - log pi(v))       KL(ref || pi)
        kl_reverse [N] = sum_v pi(v) (log pi(v) - log ref(v))        KL(pi || ref)
    With `ref_sharpness` s [N] the reference is tempered, `reweighted_reference(log ref, s, ref_nucleus)` (RAPO's
    reward-aware reference), and two more [N] say what the tempering did: `ref_hat_tail`, its mass on tokens the
    reference gives < REF_TAIL_BELOW, and `ref_hat_entropy_gain`, H(ref_hat) - H(ref) in nats. RAPO reweights the
    sequence-level reference, pi_ref(y|x)^phi(r) / Z(x); per token is this project's stand-in (its Z is exact at
    each position; the sequence-level Z is a sum over all responses).
    Logits are float32 (float64 stays float64, for the exact gradient tests).

    >>> h, W = torch.randn(5, 8), torch.randn(11, 8)
    >>> s = token_stats(h, W, torch.tensor([0, 3, 3, 10, 1]), temperature=1.0, chunk_size=2)
    >>> torch.allclose(s["logp"], torch.log_softmax(h @ W.T, -1)[torch.arange(5), [0, 3, 3, 10, 1]])
    True
    """
    with_ref, reweighted = ref_hidden is not None, ref_sharpness is not None
    chunk_fn = partial(_chunk_stats, head=head, ref_head=ref_head, temperature=temperature, nucleus=ref_nucleus)
    outs = []
    for s in range(0, len(targets), chunk_size):
        args = (hidden[s:s + chunk_size], targets[s:s + chunk_size]) + (
            (ref_hidden[s:s + chunk_size], ref_sharpness[s:s + chunk_size] if reweighted else None) if with_ref else ())
        if torch.is_grad_enabled() and len(targets) > chunk_size:
            outs.append(checkpoint(chunk_fn, *args, use_reentrant=False))
        else:
            outs.append(chunk_fn(*args))
    names = ["logp", "entropy"] + (["ref_logp", "kl_forward", "kl_reverse"] if with_ref else []) + (
        ["ref_hat_tail", "ref_hat_entropy_gain"] if reweighted else [])
    return {name: torch.cat([o[j] for o in outs]) if outs else hidden.new_zeros(0) for j, name in enumerate(names)}


def token_weights(seq_lens: torch.Tensor, mode: str, n_seqs: int, n_tokens: int, max_len: int) -> torch.Tensor:
    """Per-token weights w_t that turn token losses into the step's loss, sum_t w_t L_t, for one aggregation mode.

    `seq_lens` [B] are the completion lengths |y_i| of the sequences at hand; `n_seqs` and `n_tokens` count ALL
    sequences and completion tokens of the optimizer step (every micro-batch, every rank), so micro-batches and
    ranks add up to exactly the loss below:
        token-mean                (1 / sum_i |y_i|)         sum_i sum_t L_it       DAPO
        seq-mean-token-mean       (1 / n) sum_i (1 / |y_i|) sum_t L_it             GRPO
        seq-mean-token-sum-norm   (1 / (n * max_len))       sum_i sum_t L_it       Dr.GRPO
        sum                       (1 / n)                   sum_i sum_t L_it       POPE authors (PipelineRL)

    >>> token_weights(torch.tensor([1, 3]), "seq-mean-token-mean", n_seqs=2, n_tokens=4, max_len=8)
    tensor([0.5000, 0.1667, 0.1667, 0.1667], dtype=torch.float64)
    """
    per_seq = {
        "token-mean": torch.full(seq_lens.shape, 1.0 / n_tokens),
        "seq-mean-token-mean": 1.0 / (n_seqs * seq_lens.double()),
        "seq-mean-token-sum-norm": torch.full(seq_lens.shape, 1.0 / (n_seqs * max_len)),
        "sum": torch.full(seq_lens.shape, 1.0 / n_seqs),
    }[mode]
    return per_seq.double().repeat_interleave(seq_lens)  # [N] float64: the caller casts to the loss's dtype


def kl_term(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str, clamp: float,
            kl_forward: torch.Tensor | None = None, kl_reverse: torch.Tensor | None = None):
    """Per-token KL penalty: (loss_t, value_t), each [N]. loss_t goes into the loss; at each visited state, its
    expected gradient over tokens sampled from pi there is the gradient of the KL in the name. value_t is an unbiased
    estimate of that KL's value, for the logs. With log u = log ref(y_t) - log pi(y_t) at the sampled token:

        kind            loss_t                           E[grad loss_t]      value_t
        reverse-k2      (log u)^2 / 2                    grad KL(pi || ref)  u - 1 - log u  (k3)
        reverse-exact   sum_v pi log(pi / ref)           grad KL(pi || ref)  the same
        forward-k3      u - 1 - log u  (GRPO's k3)       grad KL(ref || pi)  u log u - u + 1
        forward-exact   sum_v ref log(ref / pi)          grad KL(ref || pi)  the same

    Why: grad k2 = -(log u) grad log pi, whose mean under pi is grad KL(pi || ref); grad k3 = (1 - u) grad log pi,
    whose mean is -sum_v ref(v) grad log pi(v) = grad KL(ref || pi). So GRPO's k3 (DeepSeekMath, verl `low_var_kl`)
    has the value of the reverse KL and the gradient of the forward one (docs/algorithms.md §1.5;
    https://xihuai18.github.io/reinforcement-learning/2025/12/01/kl-estimators-en.html). k1 = -log u is left out:
    its expected gradient is exactly 0. RAPO's sampled w log w - w + 1 is a value estimate only: differentiated, it
    gives -w log w grad log pi, which is biased.

    The bound (`clamp`): one token's coefficient on grad log pi, -log u (k2) or 1 - u (k3), is unbounded as pi(y_t)
    -> 0. The sampled terms therefore use log u clamped to +-clamp in VALUE with the gradient passed straight through,
    so past the bound a token's coefficient saturates at -+clamp (k2) or 1 - e^+-clamp (k3) instead of dropping to 0:
    the anchor keeps pulling, at most e^clamp per token, and exactly as named wherever |log u| <= clamp. (A plain
    clamp would give exactly the collapsing tokens, those RAPO is about, no pull at all.) value_t is never clamped.
    (All of this holds for on-policy samples: with --minibatches > 1 the later minibatches sample from pi_old.)

    >>> loss_t, value_t = kl_term(torch.tensor([-1.0]), torch.tensor([-1.0]), "reverse-k2", clamp=5.0)
    >>> loss_t, value_t                                                                  # the policies agree
    (tensor([0.]), tensor([0.]))
    """
    if kind == "reverse-exact":
        return kl_reverse, kl_reverse
    if kind == "forward-exact":
        return kl_forward, kl_forward
    log_u = ref_logp - logp  # [N]
    bounded = log_u + (log_u.clamp(-clamp, clamp) - log_u).detach()  # [N] value clamped, d/d log_u = 1 everywhere
    if kind == "reverse-k2":
        k3 = torch.expm1(log_u) - log_u  # [N] not exp - 1: in float32 that rounds below 0 near log_u = 0
        return 0.5 * bounded**2, k3.detach()
    if kind == "forward-k3":
        u = log_u.exp()  # [N]
        return torch.expm1(bounded) - bounded, (u * log_u - u + 1).detach()
    raise ValueError(f"unknown KL term {kind!r}; choose one of {KL_CHOICES}")


def grpo_loss(logp, old_logp, adv, weights, eps_low: float, eps_high: float, entropy=None, entropy_coef: float = 0.0,
              ref_logp=None, kl: str = "reverse-k2", kl_coef: float = 0.0, kl_clamp: float = 5.0, kl_forward=None,
              kl_reverse=None, kl_cov_ratio: float = 0.0, kl_cov_coef: float = 1.0):
    """The step's loss sum_t w_t L_t over N completion tokens, and token-level metric sums as 0-dim tensors (they
    stay on the device: the trainer reads a step's metrics at once, `step_metrics`).

    logp, old_logp, adv, weights, entropy, ref_logp, kl_forward, kl_reverse: [N] (adv is the sequence's advantage
    at each of its tokens; the last five come from `token_stats`). kl, kl_coef, kl_clamp: see `kl_term`.
    kl_cov_ratio > 0 adds KL-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs"): the
    tokens whose logprob moves most with their advantage, the top kl_cov_ratio of Cov_t over these N tokens, are held
    near the rollout policy by kl_cov_coef * |logp_t - old_logp_t|. Their code (verl) drops the clip for it; here it is
    added to the clipped surrogate, so it composes with every other term.
    """
    ratio = torch.exp(logp - old_logp)  # [N] rho_t; exactly 1 (with gradient) when old_logp = logp.detach()
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)  # [N]
    loss_t = -torch.minimum(ratio * adv, clipped * adv)  # [N] PPO's pessimistic surrogate
    metrics = {
        # tokens where the clip is active (gradient zero): above 1 + eps_high with A > 0, below 1 - eps_low with A < 0
        "clip_pos": ((adv > 0) & (ratio > 1 + eps_high)).sum(), "n_pos": (adv > 0).sum(),
        "clip_neg": ((adv < 0) & (ratio < 1 - eps_low)).sum(), "n_neg": (adv < 0).sum(),
    }
    if kl_coef > 0:
        kl_loss, kl_value = kl_term(logp, ref_logp, kl, kl_clamp, kl_forward, kl_reverse)  # [N] each
        loss_t = loss_t + kl_coef * kl_loss  # [N]
        metrics["kl"] = kl_value.detach().sum()
        metrics["kl_clamped"] = ((ref_logp - logp).abs() > kl_clamp).sum() if "exact" not in kl else logp.new_zeros(())
    if entropy is not None:
        loss_t = loss_t - entropy_coef * entropy  # [N]
        metrics["entropy"] = entropy.detach().sum()
    if kl_cov_ratio > 0:
        lp = logp.detach()
        cov = (lp - lp.mean()) * (adv - adv.mean())  # [N] Cov_t, each token's term of the batch covariance
        top = cov.topk(max(1, int(kl_cov_ratio * len(cov)))).indices  # [n_top] the largest
        penalty = torch.zeros_like(loss_t).index_copy(0, top, (logp - old_logp)[top].abs())  # [N] 0 off the top
        loss_t = loss_t + kl_cov_coef * penalty  # [N]
    return (weights * loss_t).sum(), metrics


# ----------------------------------------------------------------------------------------------------------------
# One step's data: its prompts, and its rollouts as tensors


def prompts_for_step(prompts: list, step: int, per_step: int, seed: int) -> list:
    """The step's prompts: consecutive slices of seeded per-epoch permutations (resumable from the step alone)."""
    out, start = [], step * per_step
    for i in range(start, start + per_step):
        epoch, pos = divmod(i, len(prompts))
        out.append(prompts[np.random.default_rng([seed, epoch]).permutation(len(prompts))[pos]])
    return out


def batch_tensors(seqs: list[dict], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded token ids [b, S] of prompt + completion, the attention mask [b, S], and the loss mask [b, S]:
    True exactly at completion tokens (prompt tokens, a POPE guiding prefix among them, and padding are False).

    >>> seqs = [dict(ids=[7, 8, 9], n_prompt=2), dict(ids=[5, 6], n_prompt=1)]
    >>> ids, attention_mask, loss_mask = batch_tensors(seqs, "cpu")
    >>> ids.tolist(), loss_mask.tolist()
    ([[7, 8, 9], [5, 6, 0]], [[False, False, True], [False, True, False]])
    """
    width = max(len(s["ids"]) for s in seqs)
    ids = torch.tensor([s["ids"] + [0] * (width - len(s["ids"])) for s in seqs], device=device)  # [b, S]
    positions = torch.arange(width, device=device)[None]  # [1, S]
    length = torch.tensor([len(s["ids"]) for s in seqs], device=device)[:, None]  # [b, 1]
    n_prompt = torch.tensor([s["n_prompt"] for s in seqs], device=device)[:, None]  # [b, 1]
    attention_mask = positions < length  # [b, S]
    return ids, attention_mask, (positions >= n_prompt) & attention_mask


@dataclass
class Rollouts:
    """This rank's rollouts of one step, n = prompts x G sequences, built once; per-token values sit at their
    token's position (read them with `x[loss_mask]`, in the order of `token_stats`)."""

    ids: torch.Tensor  # [n, S] prompt + completion, right-padded
    attention_mask: torch.Tensor  # [n, S]
    loss_mask: torch.Tensor  # [n, S] True exactly at completion tokens
    sampler_logp: torch.Tensor  # [n, S] vLLM's log-probability of each completion token (0 elsewhere)
    adv: torch.Tensor  # [n] the sequence's advantage
    seq_lens: torch.Tensor  # [n] on the host: prompt + completion tokens
    completion_lens: torch.Tensor  # [n] on the host: completion tokens |y_i|
    ref_sharpness: torch.Tensor | None = None  # [n] the KL reference's tempering, ref^s (RAPO's phi); None: plain
    old_logp: torch.Tensor | None = None  # [n, S] pi_old at the rollout weights (with --minibatches > 1)

    def rows(self, idx) -> Rollouts:
        """The sequences `idx`, trimmed to the longest of them."""
        width = int(self.seq_lens[idx].max())
        cut = lambda t: None if t is None else (t[idx][:, :width] if t.dim() == 2 else t[idx])  # noqa: E731
        return Rollouts(*(cut(getattr(self, f.name)) for f in dataclasses.fields(self)))

    def per_token(self, t: torch.Tensor) -> torch.Tensor:
        """[n] per sequence or [n, S] per position -> [N] at the completion tokens."""
        return (t[:, None].expand_as(self.loss_mask) if t.dim() == 1 else t)[self.loss_mask]


def micro_batches(seq_lens: np.ndarray, max_seqs: int, max_tokens: int = 0, min_passes: int = 0) -> list[np.ndarray]:
    """Which sequences share each forward/backward pass, from their lengths [m] (prompt + completion). max_tokens 0:
    consecutive groups of max_seqs. Otherwise longest first, each pass at most max_seqs sequences and at most
    max_tokens padded tokens (its sequences x its longest; a sequence longer than that goes alone), and at least
    `min_passes` passes (the largest split in two until there are): under FSDP every rank must run as many forwards
    as the others, since each gathers the weights with all of them. The loss does not depend on the grouping:
    `token_weights` count the whole optimizer step.

    >>> micro_batches(np.array([5, 100, 20, 90, 10]), max_seqs=4, max_tokens=200)
    [array([1, 3]), array([2, 4, 0])]
    >>> micro_batches(np.array([5, 100, 20, 90, 10]), max_seqs=4, max_tokens=200, min_passes=3)
    [array([1, 3]), array([2, 4]), array([0])]
    """
    if max_tokens <= 0:
        return [np.arange(s, min(s + max_seqs, len(seq_lens))) for s in range(0, len(seq_lens), max_seqs)]
    batches, current = [], []
    for i in np.argsort(-seq_lens, kind="stable"):  # longest first: a pass's first sequence is its longest
        if current and (len(current) == max_seqs or (len(current) + 1) * seq_lens[current[0]] > max_tokens):
            batches.append(np.array(current))
            current = []
        current.append(i)
    batches += [np.array(current)] if current else []
    while len(batches) < min(min_passes, len(seq_lens)):
        j = max(range(len(batches)), key=lambda k: len(batches[k]))  # the pass with the most sequences
        half = (len(batches[j]) + 1) // 2
        batches[j:j + 1] = [batches[j][:half], batches[j][half:]]
    return batches


def rollout_tensors(groups, rewards: torch.Tensor, ref_sharpness: torch.Tensor | None, cfg: Config,
                    device) -> Rollouts:
    """The step's sequences as tensors, with group-relative advantages from the rewards [B, G] (and the sharpness
    [B, G] of each sequence's KL reference, None for the plain one)."""
    adv = group_advantages(rewards, cfg.adv_std_norm, cfg.adv_eps)  # [B, G]
    samples = [s for group in groups for s in group]
    ids, attention_mask, loss_mask = batch_tensors(
        [dict(ids=s.prompt_ids + s.completion_ids, n_prompt=len(s.prompt_ids)) for s in samples], device)
    sampler_logp = torch.zeros(ids.shape, device=device)  # [n, S]
    sampler_logp[loss_mask] = torch.tensor([lp for s in samples for lp in s.logprobs], device=device)
    completion_lens = torch.tensor([len(s.completion_ids) for s in samples])  # [n]
    seq_lens = completion_lens + torch.tensor([len(s.prompt_ids) for s in samples])  # [n]
    return Rollouts(ids, attention_mask, loss_mask, sampler_logp, adv.flatten().to(device), seq_lens, completion_lens,
                    None if ref_sharpness is None else ref_sharpness.flatten().to(device))


# ----------------------------------------------------------------------------------------------------------------
# The models: the policy and the reference, whose forwards return `token_stats` at completion positions


def full_tensor(t):
    """A tensor whole: an FSDP2 shard (DTensor) gathered from every rank, anything else as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def world_size() -> int:
    """Ranks in the job (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def completion_states(lm, input_ids, attention_mask, loss_mask) -> torch.Tensor:
    """The final hidden states [N, H] that predict completion tokens (position j predicts token j + 1)."""
    hidden = lm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state  # [b,S,H]
    return hidden[:, :-1][loss_mask[:, 1:]]  # [N, H] prompt and padding positions dropped


class Policy(torch.nn.Module):
    """A causal LM whose forward returns `token_stats` at completion positions only (never the full logits).

    Wrapping the HF model in one module makes the whole computation a single forward of the FSDP2 root, so the
    output embedding is gathered (unsharded) while the chunks use it. `lm` keeps the HF parameter names. The KL's
    reference is opt-in: `ref` = (hidden [N, H], head [V, H], sharpness [N] or None, nucleus) from a `Reference`, its
    output embedding, and the reference's tempering (RAPO's; None: the plain reference; see `token_stats`).
    """

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, loss_mask, temperature: float, chunk_size: int, ref=None):
        h = completion_states(self.lm, input_ids, attention_mask, loss_mask)  # [N, H]
        targets = input_ids[:, 1:][loss_mask[:, 1:]]  # [N] the completion tokens
        return token_stats(h, self.lm.lm_head.weight, targets, temperature, chunk_size, *(ref or ()))


class Reference(torch.nn.Module):
    """The frozen reference model (only with a KL term): forward returns its final hidden states at completion
    positions [N, H]; the policy's forward turns them into logits chunk by chunk, with `head` [V, H], its output
    embedding whole (`gather_head`, once the model is sharded)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.head = lm.lm_head.weight.detach()

    def gather_head(self) -> Reference:
        self.head = full_tensor(self.lm.lm_head.weight).detach()  # [V, H] from the shards, once
        return self

    def forward(self, input_ids, attention_mask, loss_mask):
        return completion_states(self.lm, input_ids, attention_mask, loss_mask)


def load_model(cfg: Config, device, world: int, trainable: bool) -> Policy | Reference:
    """The policy (a `Policy`, trainable) or the frozen `Reference`: the HF model in float32 (master weights),
    sharded with FSDP2 when world > 1 (each decoder layer, then the root: embeddings, final norm, lm_head)."""
    lm = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32).to(device)
    if trainable and cfg.grad_checkpointing:
        lm.gradient_checkpointing_enable()
    model = (Policy if trainable else Reference)(lm).train(trainable).requires_grad_(trainable)
    if world > 1:
        mp = MixedPrecisionPolicy(param_dtype=compute_dtype(cfg.dtype), reduce_dtype=torch.float32)
        for layer in lm.model.layers:
            fully_shard(layer, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
    return model if trainable else model.gather_head()


def hf_state(policy: Policy):
    """(HF name, parameter) pairs of the policy for the engine, in a fixed order; a tied embedding is one parameter
    under both of its names (`Engine.sync_weights` gathers it once). Buffers are not weights: none is sent."""
    return policy.lm.named_parameters(remove_duplicate=False)


# ----------------------------------------------------------------------------------------------------------------
# The phases of a step


def learning_rate(cfg: Config, step: int) -> float:
    """--lr, or with --lr-schedule cosine: lr (1 + cos(pi min(step, H) / H)) / 2, H = --lr-decay-steps or --steps:
    lr at step 0, lr / 2 at H / 2, 0 from H on."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    horizon = cfg.lr_decay_steps or cfg.steps
    return cfg.lr * (1 + math.cos(math.pi * min(step, horizon) / horizon)) / 2


def loss_options(cfg: Config) -> dict:
    """The loss knobs of a Config, as `grpo_loss`'s keyword arguments."""
    return dict(eps_low=cfg.eps_low, eps_high=cfg.eps_high, entropy_coef=cfg.entropy_coef, kl=cfg.kl,
                kl_coef=cfg.kl_coef, kl_clamp=cfg.kl_log_ratio_clamp, kl_cov_ratio=cfg.kl_cov_ratio,
                kl_cov_coef=cfg.kl_cov_coef)


@contextmanager
def timed(timings: dict, name: str):
    """Add the seconds spent in the block to timings[name]."""
    start = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def micro_batch_stats(policy, ref, ro: Rollouts, cfg: Config, autocast) -> dict[str, torch.Tensor]:
    """`token_stats` of micro-batch `ro` under the policy (with the reference's KL terms when there is one)."""
    with autocast:
        ref_inputs = None
        if ref is not None:
            with torch.no_grad():
                sharpness = None if ro.ref_sharpness is None else ro.per_token(ro.ref_sharpness)  # [N] None: plain
                ref_inputs = (ref(ro.ids, ro.attention_mask, ro.loss_mask), ref.head, sharpness, cfg.ref_nucleus)
        return policy(ro.ids, ro.attention_mask, ro.loss_mask, cfg.temperature, cfg.logprob_chunk, ref_inputs)


def update(policy, ref, optimizer, ro: Rollouts, cfg: Config, device, autocast, timings) -> dict:
    """Loss and optimizer step(s) on the step's rollouts: each of --minibatches slices of the sequences is one
    optimizer step, its gradient accumulated over micro-batches. Returns the loss's metric sums over tokens, as
    0-dim tensors on the device: none is read here (the host numbers reduced per minibatch are the step's sequence
    and token counts, and under torchrun with a token budget the passes per rank)."""
    sums, n_tokens = {}, 0

    def add(name: str, value: torch.Tensor) -> None:
        sums[name] = sums.get(name, 0.0) + value.double()

    def passes(seq_lens: torch.Tensor) -> list[np.ndarray]:  # the same number on every rank (`micro_batches`)
        plan = micro_batches(seq_lens.numpy(), cfg.micro_batch_size, cfg.micro_batch_tokens)
        if world_size() > 1 and cfg.micro_batch_tokens:
            most = reduce_sums({"passes": len(plan)}, device, dist.ReduceOp.MAX)["passes"]
            plan = micro_batches(seq_lens.numpy(), cfg.micro_batch_size, cfg.micro_batch_tokens, int(most))
        return plan

    if cfg.minibatches > 1:  # pi_old: the trainer's logprobs at the rollout weights, before the first update
        ro.old_logp = torch.zeros(ro.ids.shape, device=device)  # [n, S]
        with torch.no_grad(), timed(timings, "old_logprobs"):
            for idx in passes(ro.seq_lens):
                mb = ro.rows(idx)
                block = ro.old_logp[idx, :mb.ids.shape[1]]  # [b, S_mb] a copy (indexed by a list of rows)
                block[mb.loss_mask] = micro_batch_stats(policy, None, mb, cfg, autocast)["logp"].float()
                ro.old_logp[idx, :mb.ids.shape[1]] = block
    for minibatch in np.array_split(np.arange(len(ro.adv)), cfg.minibatches):
        totals = reduce_sums({"seqs": len(minibatch), "tokens": int(ro.completion_lens[minibatch].sum())}, device)
        for part in passes(ro.seq_lens[minibatch]):
            mb = ro.rows(minibatch[part])
            with timed(timings, "logprobs"):
                stats = micro_batch_stats(policy, ref, mb, cfg, autocast)
                old = stats["logp"].detach() if mb.old_logp is None else mb.per_token(mb.old_logp)  # [N] pi_old
                weights = token_weights(mb.completion_lens, cfg.loss_agg, int(totals["seqs"]), int(totals["tokens"]),
                                        cfg.max_new_tokens).to(device, stats["logp"].dtype)  # [N]
                loss, loss_sums = grpo_loss(stats["logp"], old, mb.per_token(mb.adv), weights,
                                            entropy=stats["entropy"], ref_logp=stats.get("ref_logp"),
                                            kl_forward=stats.get("kl_forward"), kl_reverse=stats.get("kl_reverse"),
                                            **loss_options(cfg))
            with timed(timings, "backward_step"):
                (loss * world_size()).backward()  # FSDP averages gradients over ranks; the weights count all ranks
            for name, value in loss_sums.items():
                add(name, value)
            if mb.ref_sharpness is not None and "ref_hat_tail" in stats:  # RAPO: on the tokens it tempered (s < 1)
                tempered = mb.per_token(mb.ref_sharpness) < 1  # [N]
                add("ref_hat_tail", (stats["ref_hat_tail"] * tempered).sum())
                add("ref_hat_entropy_gain", (stats["ref_hat_entropy_gain"] * tempered).sum())
                add("n_reweighted", tempered.sum())
            gap = (old - mb.per_token(mb.sampler_logp)).abs()  # [N] the trainer at the rollout weights vs vLLM
            add("gap_sum", gap.sum())
            sums["gap_max"] = torch.maximum(sums.get("gap_max", gap.new_zeros(()).double()), gap.max().double())
            n_tokens += len(gap)
        with timed(timings, "backward_step"):
            norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)  # before clipping
            add("grad_norm_sum", full_tensor(norm) / cfg.minibatches)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return {**sums, "n_tokens": n_tokens}


def sync(engine: Engine, policy: Policy, sleep_level: int) -> None:
    """Push the new weights into the engine: the next rollouts come from the updated policy."""
    if sleep_level:
        engine.wake_up(["weights"])  # weight memory first, the KV cache after the sync: a lower peak
    engine.sync_weights(hf_state(policy))
    if sleep_level:
        engine.wake_up(["kv_cache"])


def step_metrics(step: int, prompts: list[data.Prompt], groups, rewards: torch.Tensor, loss_sums: dict,
                 reward_failures: int, lr: float, kinds: list[str], timings: dict, device) -> dict:
    """Every metric of a step, over all ranks: sums here (the loss's still on the device), then one reduction, which
    brings them to the host at once, then the ratios."""
    lengths = [len(s.completion_ids) for group in groups for s in group]
    sums = {**loss_sums, "reward_sum": rewards.sum().item(), "n_samples": rewards.numel(), "n_groups": len(prompts),
            "zero_std_groups": (rewards.std(1) == 0).sum().item(), "len_sum": sum(lengths),
            "truncated": sum(s.finish_reason == "length" for group in groups for s in group),
            "reward_failures": reward_failures}
    for kind in kinds:  # per prompt kind (POPE: guided / unguided), never pooled; every rank has every kind's keys
        kind_rewards = [rewards[j].mean().item() for j, p in enumerate(prompts) if p.kind == kind]
        sums.update({f"r_{kind}": sum(kind_rewards), f"n_{kind}": len(kind_rewards),
                     f"solved_{kind}": sum(r > 0 for r in kind_rewards)})
    maxes = reduce_sums({"len_max": max(lengths), "gap_max": sums.pop("gap_max")}, device, dist.ReduceOp.MAX)
    sums = reduce_sums(sums, device)
    n_tok = max(sums["n_tokens"], 1)
    metrics = {
        "step": step, "reward": sums["reward_sum"] / sums["n_samples"],
        "samples": sums["n_samples"], "sampled_tokens": sums["len_sum"],  # the step's rollout budget, all ranks
        "zero_std_frac": sums["zero_std_groups"] / sums["n_groups"],
        "len_mean": sums["len_sum"] / sums["n_samples"], "len_max": maxes["len_max"],
        "truncated_frac": sums["truncated"] / sums["n_samples"],
        "clip_frac_pos_adv": sums["clip_pos"] / max(sums["n_pos"], 1),
        "clip_frac_neg_adv": sums["clip_neg"] / max(sums["n_neg"], 1),
        "entropy": sums["entropy"] / n_tok, "grad_norm": sums["grad_norm_sum"] / world_size(), "lr": lr,
        "logprob_gap_mean": sums["gap_sum"] / n_tok, "logprob_gap_max": maxes["gap_max"],
        "reward_failures": sums["reward_failures"],
        **({"kl": sums["kl"] / n_tok, "kl_clamp_frac": sums["kl_clamped"] / n_tok} if "kl" in sums else {}),
        **({"ref_hat_tail": sums["ref_hat_tail"] / max(sums["n_reweighted"], 1), "reweighted_frac":
            sums["n_reweighted"] / n_tok, "ref_hat_entropy_gain": sums["ref_hat_entropy_gain"] /
            max(sums["n_reweighted"], 1)} if "ref_hat_tail" in sums else {}),
        **{f"time_{k}": v for k, v in timings.items()},
    }
    for kind in kinds:
        if sums.get(f"n_{kind}"):
            metrics[f"reward_{kind}"] = sums[f"r_{kind}"] / sums[f"n_{kind}"]
            metrics[f"solve_rate_{kind}"] = sums[f"solved_{kind}"] / sums[f"n_{kind}"]
    return metrics


GAP_BOUND = {torch.float32: 1e-3, torch.bfloat16: 0.1}  # --max-logprob-gap 0: the bound for the compute dtype

def check_health(metrics: dict, cfg: Config) -> None:
    """Stop a run that has gone wrong in a way the loss cannot show: an engine that does not serve the trainer's
    weights (checked every step, so the first sync and a --resume are checked first), and RAPO's reweighted
    reference drifting onto the tail or far above the reference's entropy."""
    bound = cfg.max_logprob_gap or GAP_BOUND[compute_dtype(cfg.dtype)]
    if metrics["logprob_gap_mean"] > bound:
        raise HealthError(
            f"step {metrics['step']}: vLLM's logprobs differ from the trainer's by {metrics['logprob_gap_mean']:.2e} "
            f"a token on average (bound {bound:g}, --max-logprob-gap): the engine is not serving the trainer's "
            "weights. Likely a weight sync that loaded nothing or the wrong names (a model whose HF names vLLM maps "
            "differently), a stale prefix cache, or an engine of another dtype; the first bad step says which sync")
    for name, limit, flag in [("ref_hat_tail", cfg.ref_hat_max_tail, "--ref-hat-max-tail"),
                              ("ref_hat_entropy_gain", cfg.ref_hat_max_entropy_gain, "--ref-hat-max-entropy-gain")]:
        if metrics.get(name, 0.0) > limit:
            raise HealthError(f"step {metrics['step']}: RAPO's reweighted reference has {name} {metrics[name]:.3g} "
                              f"(bound {limit:g}, {flag}): raise --ref-nucleus (tempers fewer tokens) or "
                              "--ref-phi-min (tempers less), or raise the bound if this is intended")


# ----------------------------------------------------------------------------------------------------------------
# Infrastructure: config checks, the engine, checkpoints (exact resume), memory, logs


def check_config(cfg: Config, world: int) -> None:
    """Reject settings that cannot work, before anything is loaded."""
    if cfg.prompts_per_step % world:
        raise ConfigError(f"--prompts-per-step {cfg.prompts_per_step} must be a multiple of the {world} ranks")
    if cfg.sleep_level and not torch.cuda.is_available():
        raise ConfigError("--sleep-level frees GPU memory for training; vLLM's CPU build has no sleep mode (use 0)")
    if not 0 <= cfg.ref_nucleus <= 1:
        raise ConfigError(f"--ref-nucleus {cfg.ref_nucleus}: a fraction of the reference's top probability, in [0, 1]")
    if not 0 <= cfg.kl_cov_ratio < 1:
        raise ConfigError(f"--kl-cov-ratio {cfg.kl_cov_ratio}: a fraction of tokens, in [0, 1) (0 = off)")


def save_checkpoint(out_dir: Path, step: int, policy: Policy, optimizer, model: str, rank: int,
                    dtype: torch.dtype = torch.float32) -> Path:
    """Write checkpoints/step-N/ and then, last and atomically, the `latest` pointer to it.

    step-N/hf     the model in Hugging Face format (loadable by `vllm serve` and `from_pretrained`) in `dtype`, the
                  compute dtype (bf16 on GPU: 8 GB for a 4B model, not fp32's 16), with --model's tokenizer, from rank 0
    step-N/train  model + optimizer state in torch.distributed.checkpoint format (sharded: each rank writes its own)
    step-N/rng-rank{r}.pt, step-N/state.json
    A process killed mid-write leaves a partial step-N/ that `latest` does not name: the previous checkpoint stays
    the one `--resume` uses. Older checkpoints are deleted only after the pointer moved.
    """
    root = out_dir / "checkpoints"
    path = root / f"step-{step:06d}"
    model_sd, optim_sd = get_state_dict(policy, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path / "train"))
    full = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               path / f"rng-rank{rank}.pt")
    if rank == 0:
        weights = {k.removeprefix("lm."): v.to(dtype) if v.is_floating_point() else v for k, v in full.items()}
        policy.lm.save_pretrained(path / "hf", state_dict=weights)
        config = json.loads((path / "hf" / "config.json").read_text())  # it names the trainer's fp32, not `dtype`
        (path / "hf" / "config.json").write_text(json.dumps({**config, "dtype": str(dtype).removeprefix("torch.")},
                                                            indent=2))
        AutoTokenizer.from_pretrained(model).save_pretrained(path / "hf")
        (path / "state.json").write_text(json.dumps({"step": step}))
    if dist.is_initialized():
        dist.barrier()  # every rank's shard is on disk before the pointer moves
    if rank == 0:
        tmp = root / "latest.tmp"
        tmp.write_text(path.name)
        os.replace(tmp, root / "latest")  # atomic on POSIX: readers see the old or the new name, never half
        for old in root.glob("step-*"):
            if old != path:
                shutil.rmtree(old)
    return path


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint folder `latest` names, or None when there is none."""
    pointer = Path(out_dir) / "checkpoints" / "latest"
    return pointer.parent / pointer.read_text().strip() if pointer.is_file() else None


def load_checkpoint(path: Path, policy: Policy, optimizer, rank: int) -> int:
    """Restore model, optimizer and RNG state saved by `save_checkpoint`; returns the number of steps done."""
    model_sd, optim_sd = get_state_dict(policy, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path / "train"))
    set_state_dict(policy, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng = torch.load(path / f"rng-rank{rank}.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    if rng["cuda"] is not None:
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())["step"] + 1


def resume(out_dir: Path, policy: Policy, optimizer, rank: int) -> int:
    """--resume: load the latest checkpoint; returns the step to continue from. The killed run may have logged steps
    after its last checkpoint: those lines are dropped, and the steps redone."""
    path = latest_checkpoint(out_dir)
    if path is None:
        raise ConfigError(f"--resume: no checkpoint in {out_dir / 'checkpoints'} (run without --resume first)")
    start_step = load_checkpoint(path, policy, optimizer, rank)
    if rank == 0:
        lines = (out_dir / "metrics.jsonl").read_text().splitlines()
        (out_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines
                                                       if json.loads(line)["step"] < start_step))
    return start_step


def memory(device) -> dict[str, float]:
    """GiB in use now: this process's resident CPU memory, and allocated / reserved GPU memory."""
    rss_pages = int(Path("/proc/self/statm").read_text().split()[1])
    mem = {"cpu_rss_gb": rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**30}
    if device.type == "cuda":
        mem.update(gpu_alloc_gb=torch.cuda.memory_allocated(device) / 2**30,
                   gpu_reserved_gb=torch.cuda.memory_reserved(device) / 2**30)
    return mem


def print_memory_table(rows: dict[str, dict[str, float]], rank: int) -> None:
    """One line per phase, one column per kind of memory (rank 0's view)."""
    if rank:
        return
    cols = list(next(iter(rows.values())))
    tqdm.write(f"{'memory (GiB)':<26}" + "".join(f"{c:>17}" for c in cols))
    for phase, mem in rows.items():
        tqdm.write(f"{phase:<26}" + "".join(f"{mem[c]:>17.2f}" for c in cols))


def start_wandb(cfg: Config):
    """A Weights & Biases run named after --out-dir, with the whole config (resumed runs continue the same name)."""
    import wandb  # here: optional, installed and imported only for --wandb-project

    return wandb.init(project=cfg.wandb_project, name=Path(cfg.out_dir).name, dir=cfg.out_dir,
                      config=dataclasses.asdict(cfg))


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def show_samples(flat, rewards, n, step, path: Path) -> None:
    """Print the first `n` rollouts of the step (the end of the prompt, the completion, its reward) and log them."""
    for (prompt, sample), r in list(zip(flat, rewards))[:n]:
        tqdm.write(f"--- step {step} | {prompt.kind} | reward {r:.2f} | {sample.finish_reason} "
                   f"| {len(sample.completion_ids)} tokens\n{prompt.problem.problem[-200:]}\n>>> {sample.text[-500:]}")
        append_jsonl(path, {"step": step, "kind": prompt.kind, "id": prompt.problem.id, "reward": r,
                            "completion": sample.text})


# ----------------------------------------------------------------------------------------------------------------
# Training: the step, top to bottom; the command-line job


def train(cfg: Config, prompts: list[data.Prompt], reward_fn=reward.prompt_reward,
          eval_prompts: list[data.Prompt] | None = None, engine: Engine | None = None,
          ref_sharpness=None) -> list[dict]:
    """Run GRPO on `prompts` with `reward_fn(completion_text, prompt) -> float`; returns the per-step metrics.

    `engine` reuses a running vLLM engine (its weights are first replaced by --model's); by default one is built.
    `ref_sharpness(rewards [B, G]) -> [B, G]` in (0, 1] tempers each sequence's KL reference to ref^s on its nucleus
    (`reweighted_reference`; RAPO's phi, rapo.py); None keeps the plain reference.
    """
    rank, world, device = init_distributed(cfg.dist_timeout_minutes)
    check_config(cfg, world)
    if rank == 0:
        tqdm.write(f"{versions()}; {world} rank(s)")
    transformers_logging.disable_progress_bar()  # its load/save bars would break the step's progress bar
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    longest = max(len(p.prompt_ids) for p in prompts + (eval_prompts or []))
    check_context(longest, cfg.max_new_tokens, cfg.max_model_len)
    # The engine first: on GPU it checks free memory before the optimizer state exists.
    engine = engine or make_engine(cfg, world, sleep_mode=cfg.sleep_level > 0)
    mem_rows = {"vllm engine": memory(device)}
    policy = load_model(cfg, device, world, trainable=True)
    ref = load_model(cfg, device, world, trainable=False) if cfg.kl_coef > 0 else None
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_step = resume(out_dir, policy, optimizer, rank) if cfg.resume else 0
    engine.sync_weights(hf_state(policy))  # the engine serves exactly the trainer's weights from the first step on
    mem_rows["+ policy, ref, optimizer"] = memory(device)
    print_memory_table(mem_rows, rank)
    pool = reward.RewardPool(cfg.reward_workers, cfg.reward_timeout)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.cuda.is_available() and world == 1
                              and compute_dtype(cfg.dtype) == torch.bfloat16)
    dashboard = start_wandb(cfg) if cfg.wandb_project and rank == 0 else None
    per_rank, kinds, history = cfg.prompts_per_step // world, sorted({p.kind for p in prompts}), []
    bar = tqdm(range(start_step, cfg.steps), disable=rank != 0, desc="grpo", initial=start_step, total=cfg.steps)
    for step in bar:
        timings, t0 = {}, time.perf_counter()
        # 1. This rank's prompts (a group never straddles ranks), and G rollouts of each from the current weights.
        batch = prompts_for_step(prompts, step, cfg.prompts_per_step, cfg.seed)[rank * per_rank:(rank + 1) * per_rank]
        with timed(timings, "rollout"):
            groups = engine.generate([p.prompt_ids for p in batch], n=cfg.group_size, temperature=cfg.temperature,
                                     max_tokens=cfg.max_new_tokens,
                                     seeds=[request_seed(cfg.seed, step, rank * per_rank + j) for j in range(per_rank)])
            mem_rows = {"after rollout": memory(device)}
            engine.sleep(cfg.sleep_level)
        # 2. Rewards, then group-relative advantages: the sequences as tensors, built once.
        with timed(timings, "reward"):
            failures_before = pool.failures
            flat = [(p, s) for p, group in zip(batch, groups) for s in group]
            rewards = torch.tensor(pool.map(reward_fn, [(s.text, p) for p, s in flat])).view(per_rank, cfg.group_size)
            sharpness = ref_sharpness(rewards) if ref_sharpness else None  # [B, G] RAPO's phi; None: plain ref
        rollouts = rollout_tensors(groups, rewards, sharpness, cfg, device)
        # 3. Loss and optimizer step(s), then the new weights into the engine.
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        loss_sums = update(policy, ref, optimizer, rollouts, cfg, device, autocast, timings)
        mem_rows["after optimizer step"] = memory(device)
        with timed(timings, "sync"):
            sync(engine, policy, cfg.sleep_level)
        mem_rows["after weight sync"] = memory(device)
        if step == start_step:
            print_memory_table(mem_rows, rank)
        # 4. Log: the metrics over all ranks, a few rollouts, and (at intervals) solvability of the eval set.
        metrics = step_metrics(step, batch, groups, rewards, loss_sums, pool.failures - failures_before,
                               learning_rate(cfg, step), kinds, timings, device)
        if eval_prompts and cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            metrics.update(evaluate.solvability(
                engine, pool, reward_fn, eval_prompts, k=cfg.eval_k, temperature=cfg.temperature,
                max_tokens=cfg.max_new_tokens, seed=cfg.seed, step=step, top_p=cfg.eval_top_p,
                top_k=cfg.eval_top_k, rank=rank, world=world, device=device))
        metrics.update({f"mem_{k}": max(m[k] for m in mem_rows.values()) for k in mem_rows["after rollout"]},
                       time_step=time.perf_counter() - t0)
        history.append(metrics)
        if rank == 0:
            append_jsonl(out_dir / "metrics.jsonl", metrics)
            if dashboard:
                dashboard.log(metrics, step=step)
            show_samples(flat, rewards.flatten().tolist(), cfg.log_samples, step, out_dir / "samples.jsonl")
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", gap=f"{metrics['logprob_gap_max']:.1e}")
        check_health(metrics, cfg)  # after its log line; the numbers are reduced, so every rank stops together
        # 5. Checkpoint after the step's log line, so every checkpointed step has its metrics on disk.
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step == cfg.steps - 1:
            path = save_checkpoint(out_dir, step, policy, optimizer, cfg.model, rank, compute_dtype(cfg.dtype))
            if rank == 0:
                tqdm.write(f"checkpoint: {path} (HF model in {path / 'hf'})")
    pool.close()
    if dashboard:
        dashboard.finish()
    return history


def run(cfg: Config, ref_sharpness=None) -> list[dict]:
    """The command-line job: check --model, load --data, render prompts, train with the math reward (and the KL
    reference's `ref_sharpness`, see `train`)."""
    check_model_path(cfg.model)
    check_device(cfg.model, cfg.allow_cpu)
    if not cfg.data:
        raise ConfigError("--data is required: a JSONL/parquet file with 'problem' and 'answer', or a name in "
                          f"data.DATASETS ({', '.join(data.DATASETS)})")
    problems = data.load_problems(cfg.data, bad_gold=cfg.bad_gold)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    eval_prompts = None
    if cfg.eval_data:
        eval_prompts = [data.make_prompt(tokenizer, p, cfg.system_prompt)
                        for p in evaluate.load_benchmark(cfg.eval_data, bad_gold=cfg.bad_gold)]
    return train(cfg, [data.make_prompt(tokenizer, p, cfg.system_prompt) for p in problems], eval_prompts=eval_prompts,
                 ref_sharpness=ref_sharpness)


def main(argv=None) -> None:
    command_line(Config, run, argv)


if __name__ == "__main__":
    main()
