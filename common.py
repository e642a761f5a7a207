"""What every script here shares: configs as command-line flags, one-line errors, torchrun setup, request seeds.

    @dataclass
    class Config:
        lr: float = opt(1e-6, "AdamW learning rate")     # becomes --lr, with this help text
    cfg = parse_config(Config, ["--lr", "3e-6"])          # Config(lr=3e-06)
    @preset({"lr": (5e-7, "SimpleRL-Zoo")})               # a script's config: new defaults, each with its source
    @dataclass
    class RapoConfig(Config): ...

    rank, world, device = init_distributed()              # (0, 1, cpu) without torchrun
    seed = stage_seed(0, PREFIX, 2, 7)                    # problem 7's request seed in round 2 of POPE's prefix search
    totals = reduce_sums({"correct": 3.0, "n": 8.0}, device)   # summed over ranks (a no-op in one process)

Deliberately small: no config files, no registries. A script's config is one dataclass; its help text is the
documentation of every knob, and `python SCRIPT.py --help` prints it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


class ConfigError(ValueError):
    """A bad command-line value; the message says what to change."""


class DataError(ValueError):
    """A data file or row that cannot be used; the message names the file, the line and the field."""


class HealthError(RuntimeError):
    """A run that must not go on (e.g. the engine does not serve the trainer's weights); the message names the likely
    cause and the flag to change."""


def opt(default, help: str, **kw):
    """A config field with its --help text (and optional argparse `choices`)."""
    return field(default=default, metadata=dict(help=help, **kw))


def preset(changes: dict[str, tuple[object, str]]):
    """Class decorator: the config dataclass with new defaults for fields it inherits, {name: (default, source)};
    each field keeps its type, choices and help text, and its --help ends in [source], where the value comes from.

    >>> @dataclasses.dataclass
    ... class Base:
    ...     lr: float = opt(1e-6, "AdamW learning rate")
    >>> @preset({"lr": (5e-7, "SimpleRL-Zoo")})
    ... @dataclasses.dataclass
    ... class Small(Base):
    ...     steps: int = opt(10, "optimizer steps")
    >>> Small(), dataclasses.fields(Small)[0].metadata["help"]
    (Small(lr=5e-07, steps=10), 'AdamW learning rate [SimpleRL-Zoo]')
    """
    def apply(cls):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"preset of {cls.__name__}: no field {', '.join(sorted(unknown))}")
        new = [(name, fields[name].type, opt(default, f"{fields[name].metadata['help']} [{source}]",
                                             **{k: v for k, v in fields[name].metadata.items() if k != "help"}))
               for name, (default, source) in changes.items()]
        out = dataclasses.make_dataclass(cls.__name__, new, bases=(cls,), namespace={"__doc__": cls.__doc__})
        out.__module__, out.__qualname__ = cls.__module__, cls.__qualname__
        return out
    return apply


def parse_config(cls, argv=None, presets: tuple[str, dict[str, dict]] | None = None):
    """Build an argparse parser from a config dataclass (one --kebab-case flag per field) and parse argv, once.

    `presets` = (field, {value: {name: default}}): the value of that field picks a set of defaults (e.g. rapo.py's
    --arm); flags given explicitly still win over it. Flags are never abbreviated (--arm is not --arms).
    """
    parser = argparse.ArgumentParser(description=sys.modules[cls.__module__].__doc__.split("\n")[0], allow_abbrev=False,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    field_of = {}  # option string -> field name
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata["help"].replace("%", "%%")  # argparse %-formats help text: "30%" must print as written
        if f.type in ("bool", bool):
            action = parser.add_argument(flag, default=f.default, action=argparse.BooleanOptionalAction, help=text)
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            action = parser.add_argument(flag, type=kind, default=f.default, choices=f.metadata.get("choices"),
                                         help=text)
        field_of.update({option: f.name for option in action.option_strings})
    argv = sys.argv[1:] if argv is None else list(argv)
    values = vars(parser.parse_args(argv))
    if presets:
        by, table = presets
        given = {field_of[a.split("=")[0]] for a in argv if a.split("=")[0] in field_of}
        values.update({k: v for k, v in table[values[by]].items() if k not in given})
    return cls(**values)


def check_model_path(model: str) -> None:
    """Fail early, in one line, on a --model that is neither a local folder nor a model on the Hub (or, offline, in
    the local Hugging Face cache). A Hub id's config.json is fetched here (offline: looked up in the cache, at once),
    so an unknown id ends in one line instead of a library's traceback after the first model load."""
    if not model:
        raise ConfigError("--model is required (a local HF folder or a Hub id such as Qwen/Qwen3-4B-Instruct-2507); "
                          "the CPU toy worlds need none: python toys/pope_compare.py, python toys/rapo_world.py")
    if Path(model).exists():
        if not (Path(model) / "config.json").is_file():
            raise ConfigError(f"--model {model}: the folder has no config.json (not a Hugging Face model folder)")
        return
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ConfigError(f"--model {model}: no such folder, and not a Hub id of the form org/name")
    import huggingface_hub  # here: only a Hub id needs it
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        huggingface_hub.hf_hub_download(model, "config.json")
    except LocalEntryNotFoundError:  # offline or the Hub unreachable, and not cached (a subclass of EntryNotFound)
        where = ("offline: HF_HUB_OFFLINE=1" if huggingface_hub.constants.is_offline_mode() else
                 "the Hub was not reachable")
        raise ConfigError(f"--model {model}: not a local folder, and not in the local Hugging Face cache ({where}); "
                          f"download it first with `hf download {model}` (where the Hub is reachable) or pass a local "
                          "folder") from None
    except RepositoryNotFoundError:  # GatedRepoError too
        raise ConfigError(f"--model {model}: not a local folder, and not a model on the Hub (or a private or gated "
                          "one: log in with `hf auth login`); check the id or pass a local folder") from None
    except EntryNotFoundError:
        raise ConfigError(f"--model {model}: the Hub repo has no config.json (not a Hugging Face model)") from None


GPU_SIZED = 100e6  # parameters: above this a model is not one to train or sample on CPU [this project's]


def check_device(model: str, allow_cpu: bool) -> None:
    """Refuse, in one line, to start a GPU-sized job (a model of more than GPU_SIZED parameters, counted on the meta
    device from its config) where torch sees no CUDA device (a driver too old for torch's CUDA, a CPU-only torch,
    CUDA_VISIBLE_DEVICES empty), unless `allow_cpu` (--allow-cpu): on CPU such a run would take weeks."""
    if allow_cpu or torch.cuda.is_available():
        return
    from transformers import AutoConfig, AutoModelForCausalLM  # here: only this check needs them in common

    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).parameters())
    if n > GPU_SIZED:
        raise ConfigError(f"--model {model} has {n / 1e9:.2f} B parameters, but torch {torch.__version__} sees no "
                          f"CUDA device (built for CUDA {torch.version.cuda or 'none: a CPU-only build'}; the pinned "
                          "torch and vLLM need a CUDA 13 driver, R580 or newer; check nvidia-smi and "
                          "CUDA_VISIBLE_DEVICES); pass --allow-cpu to run on CPU anyway")


def versions() -> str:
    """One line of what this job runs on: torch and its CUDA, the NVIDIA driver, the GPUs, vLLM and its model
    runner (rollout.py pins V1)."""
    try:
        import vllm  # here: the trainer half of bench/node_check.py runs where vLLM is not installed

        vllm_version = vllm.__version__
    except ImportError:
        vllm_version = "not installed"
    proc = Path("/proc/driver/nvidia/version")  # "NVRM version: NVIDIA UNIX ... Kernel Module  580.65.06  ..."
    driver = re.search(r"\s(\d{3}\.\d+(?:\.\d+)?)\s", proc.read_text()) if proc.is_file() else None
    gpus = (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else
            "no CUDA device")
    runner = "V2" if os.environ.get("VLLM_USE_V2_MODEL_RUNNER") == "1" else "V1"
    return (f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}), NVIDIA driver "
            f"{driver[1] if driver else 'none'}, {gpus}, vLLM {vllm_version} (model runner {runner})")


def compute_dtype(name: str) -> torch.dtype:
    """--dtype as a torch dtype: auto = bfloat16 on GPU, float32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def init_distributed(timeout_minutes: float = 240.0) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Under torchrun: one process per GPU (nccl) or per CPU rank (gloo).

    `timeout_minutes` bounds how long a collective waits for the slowest rank (torch's default, 10 minutes for nccl,
    is shorter than one rank sampling 16k-token responses while another waits at the next collective)."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if not dist.is_initialized():  # a caller may have started it already (e.g. to build its own engine first)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                timeout=timedelta(minutes=timeout_minutes))
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if torch.cuda.is_available() else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def reduce_sums(sums: dict, device, op=None) -> dict[str, float]:
    """Add (or max, with op=MAX) metric values over ranks in one collective; values are numbers or 0-dim tensors on
    `device`, and the host reads them all at once (one device sync however many there are)."""
    if not dist.is_initialized() and not any(isinstance(v, torch.Tensor) for v in sums.values()):
        return {k: float(v) for k, v in sums.items()}  # host numbers in one process: nothing to move
    if not sums:
        return {}
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in sums.values()])  # [k]
    if dist.is_initialized():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return dict(zip(sums, t.tolist()))


def request_seed(*parts: int) -> int:
    """A reproducible vLLM request seed from (seed, step, prompt index); requests' seeds land far apart.

    >>> request_seed(0, 1, 2) == request_seed(0, 1, 2) != request_seed(0, 2, 1)
    True
    """
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] >> 1)


# The request-seed streams of sampling outside the training rollouts (those are request_seed(seed, step, prompt
# index)): POPE's hardness filter and prefix search, the trainer's periodic solvability eval, evaluate.py's benchmarks.
MINING, PREFIX, EVAL, BENCHMARK = 1, 2, 3, 4


def stage_seed(seed: int, stage: int, round_index: int, problem_index: int) -> int:
    """The request seed of problem `problem_index` in round `round_index` of a sampling `stage` (MINING, PREFIX, EVAL,
    BENCHMARK). The problem index is its position in the stage's full problem list, so its seed depends neither on the
    batching nor on the rank; the round is the prefix search's candidate, the training step or a benchmark's name hash.

    Distinct (stage, round, problem) give distinct, far-apart seeds (vLLM seeds a request's n samples seed + 0 .. n-1).
    The stage goes last, and is never 0: numpy's SeedSequence ignores trailing zeros, so request_seed(s, a, b, 0) is
    request_seed(s, a, b), the seed of a training rollout.

    >>> stage_seed(0, PREFIX, 1, 0) != stage_seed(0, PREFIX, 0, 1) != request_seed(0, 1, 0)
    True
    """
    return request_seed(seed, round_index, problem_index, stage)


@contextmanager
def one_line_errors(timeout_minutes: float | None = None):
    """End the process with one line, `error: ...`, on a bad setting or data file, a failed health check, or a
    collective that timed out (the line names --dist-timeout-minutes); anything else keeps its traceback."""
    try:
        yield
    except (ConfigError, DataError, HealthError) as e:
        sys.exit(f"error: {e}")
    except RuntimeError as e:  # torch.distributed.DistBackendError among them
        if timeout_minutes is None or "timed out" not in str(e).lower():
            raise
        sys.exit(f"error: a collective waited more than {timeout_minutes:g} min for another rank (--dist-timeout-"
                 f"minutes {timeout_minutes:g}; raise it when one rank samples that long alone): "
                 f"{str(e).splitlines()[0][:200]}")


def command_line(cls, run, argv=None, presets=None) -> None:
    """A script's entry point: the flags parsed into `cls` once (`parse_config`), `run(cfg)` with bad input ending in
    one line, then a clean end of the torchrun job."""
    cfg = parse_config(cls, argv, presets)
    with one_line_errors(getattr(cfg, "dist_timeout_minutes", None)):
        run(cfg)
    shutdown()


def shutdown() -> None:
    """End a torchrun job cleanly once every rank is done."""
    if dist.is_initialized():
        dist.barrier()
        # vLLM's external launcher has used the default group too; destroying it can raise ValueError("Invalid
        # process group specified") (docs/cpu-stack.md §8). The run is complete at this point, so exit cleanly.
        try:
            dist.destroy_process_group()
        except ValueError:
            pass
