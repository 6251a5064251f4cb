"""Hardware topology: GPUs, the GPU-GPU link matrix, CPU, RAM and the cluster view from the environment.

`detect_topology()` reads this machine (NVML through nvidia-ml-py when a driver is present, else torch.cuda);
`load_topology(path)` reads a described machine (YAML or JSON, the same schema as `dialsum topology --json`), so plans
for hardware you don't have can be made and tested. Nodes of a multi-node cluster are assumed alike: `gpus` describes
one node and `cluster.nnodes` says how many there are.
"""
from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from engine.errors import UserError
from engine.nvml import nvml_text, visible_nvml_indices

LINK_KINDS = ("self", "nvlink", "pcie", "sys", "unknown")  # sys: the path crosses CPU sockets
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*", re.IGNORECASE)


def parse_size(value: int | float | str, where: str) -> int:
    """Bytes from an int or a size string: '80GiB' (binary), '80GB' (decimal), '24G' (binary), '512MiB'."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    match = _SIZE.fullmatch(str(value))
    if not match:
        raise UserError(f"{where}: expected a size like 80GiB, 80GB or 85899345920, got {value!r}")
    number, unit = float(match.group(1)), (match.group(2) or "b").lower()
    if unit == "b":
        return int(number)
    power = "kmgt".index(unit[0]) + 1
    base = 1000 if unit.endswith("b") and not unit.endswith("ib") else 1024
    return int(number * base**power)


@dataclass
class GPUInfo:
    index: int
    name: str
    memory_total_bytes: int
    memory_free_bytes: int | None = None   # at detection time; None when unknown
    compute_capability: str = ""           # "major.minor", e.g. "9.0"
    bf16: bool = False                     # compute capability >= 8.0


@dataclass
class ClusterInfo:
    """What the job scheduler / launcher environment says; None where a variable is not set."""
    scheduler: str = "none"                # "slurm" | "torchrun" | "none"
    nnodes: int = 1
    job_id: str | None = None
    ntasks: int | None = None
    nodelist: str | None = None
    world_size: int | None = None
    local_world_size: int | None = None
    rank: int | None = None
    local_rank: int | None = None
    master_addr: str | None = None


@dataclass
class Topology:
    hostname: str
    cpu_cores: int
    ram_bytes: int
    cpu_bf16: bool                          # the CPU has native bf16 (avx512_bf16 / AMX)
    gpus: list[GPUInfo] = field(default_factory=list)
    links: list[list[str]] = field(default_factory=list)   # links[i][j], one of LINK_KINDS
    ram_available_bytes: int | None = None
    cluster: ClusterInfo = field(default_factory=ClusterInfo)
    source: str = "detected"                # "detected" | "file:<path>"

    @property
    def nnodes(self) -> int:
        return self.cluster.nnodes

    @property
    def bf16(self) -> bool:
        """bf16 on the training device: every GPU, or the CPU when there is none."""
        return all(g.bf16 for g in self.gpus) if self.gpus else self.cpu_bf16

    def all_nvlink(self, n: int) -> bool:
        """True when the first `n` GPUs are pairwise NVLink-connected."""
        return all(self.links[i][j] == "nvlink" for i in range(n) for j in range(n) if i != j)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "topology") -> "Topology":
        """Validate and build; errors name `where` and the key."""
        data = _known(data, cls, where)
        for key in ("hostname", "cpu_cores", "ram_bytes", "cpu_bf16"):
            if key not in data:
                raise UserError(f"{where}: {key}: required")
        gpus = [GPUInfo(**_gpu_fields(g, f"{where}: gpus[{i}]")) for i, g in enumerate(data.get("gpus") or [])]
        n = len(gpus)
        links = data.get("links") or [["self" if i == j else "unknown" for j in range(n)] for i in range(n)]
        _check_links(links, len(gpus), f"{where}: links")
        cluster = ClusterInfo(**_known(data.get("cluster") or {}, ClusterInfo, f"{where}: cluster"))
        if not isinstance(cluster.nnodes, int) or cluster.nnodes < 1:
            raise UserError(f"{where}: cluster.nnodes: expected an integer >= 1, got {cluster.nnodes!r}")
        available = data.get("ram_available_bytes")
        if available is not None:
            available = parse_size(available, f"{where}: ram_available_bytes")
        return cls(hostname=str(data["hostname"]), cpu_cores=int(data["cpu_cores"]),
                   ram_bytes=parse_size(data["ram_bytes"], f"{where}: ram_bytes"), cpu_bf16=bool(data["cpu_bf16"]),
                   gpus=gpus, links=links, cluster=cluster, source=str(data.get("source", "detected")),
                   ram_available_bytes=available)


def _known(data: object, cls: type, where: str) -> dict:
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    for key in data:
        if key not in names:
            raise UserError(f"{where}: {key}: unknown key (expected one of {', '.join(sorted(names))})")
    return dict(data)


def _gpu_fields(data: object, where: str) -> dict:
    d = _known(data, GPUInfo, where)
    for key in ("index", "name", "memory_total_bytes"):
        if key not in d:
            raise UserError(f"{where}: {key}: required")
    d["memory_total_bytes"] = parse_size(d["memory_total_bytes"], f"{where}: memory_total_bytes")
    if d.get("memory_free_bytes") is not None:
        d["memory_free_bytes"] = parse_size(d["memory_free_bytes"], f"{where}: memory_free_bytes")
    cc = str(d.get("compute_capability", ""))
    d["compute_capability"] = cc
    d.setdefault("bf16", _cc_bf16(cc))
    return d


def _check_links(links: object, n: int, where: str) -> None:
    if not isinstance(links, list) or len(links) != n or any(not isinstance(r, list) or len(r) != n for r in links):
        raise UserError(f"{where}: expected a {n}x{n} matrix (one row per GPU)")
    for i, row in enumerate(links):
        for j, kind in enumerate(row):
            if kind not in LINK_KINDS:
                raise UserError(f"{where}[{i}][{j}]: must be one of {', '.join(LINK_KINDS)}; got {kind!r}")


def _cc_bf16(cc: str) -> bool:
    try:
        return int(cc.split(".")[0]) >= 8
    except ValueError:
        return False


def load_topology(path: str | Path) -> Topology:
    """A described topology from YAML or JSON (sizes may be written as '80GiB')."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{path}: cannot read topology file: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: invalid topology file: {' '.join(str(exc).split())}") from None
    topology = Topology.from_dict(data, str(path))
    topology.source = f"file:{path}"
    return topology


# ---------------------------------------------------------------------------------------------------- detection

def detect_topology(env: dict[str, str] | None = None) -> Topology:
    """This machine, plus the cluster view from `env` (default os.environ)."""
    import psutil

    env = dict(os.environ if env is None else env)
    gpus, links = _nvml_gpus(env)
    if gpus is None:
        gpus, links = _torch_gpus()
    memory = psutil.virtual_memory()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return Topology(hostname=socket.gethostname(), cpu_cores=cores, ram_bytes=int(memory.total),
                    ram_available_bytes=int(memory.available), cpu_bf16=_cpu_bf16(), gpus=gpus, links=links,
                    cluster=cluster_from_env(env))


def cluster_from_env(env: dict[str, str]) -> ClusterInfo:
    """The SLURM job (job id, tasks, node list and count) and where this process sits in its world
    (`engine.world.detect_world`, the one reader of the rank variables; None for a process no launcher started)."""
    from engine.world import detect_world

    def num(name: str) -> int | None:
        value = env.get(name, "").strip()
        return int(value) if value.isdigit() else None

    world = detect_world(env)
    started = world.kind != "single"
    slurm = bool(env.get("SLURM_JOB_ID"))
    nnodes = (num("SLURM_NNODES") or num("SLURM_JOB_NUM_NODES")) if slurm else None
    return ClusterInfo(
        scheduler="slurm" if slurm else ("torchrun" if started else "none"),
        nnodes=nnodes or world.nnodes, job_id=env.get("SLURM_JOB_ID") or None, ntasks=num("SLURM_NTASKS"),
        nodelist=env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or None,
        world_size=world.world_size if started else None,
        local_world_size=world.local_world_size if started else None,
        rank=world.rank if started else None, local_rank=world.local_rank if started else None,
        master_addr=world.master_addr if started else None)


def _cpu_bf16() -> bool:
    """Native bf16 from the CPU flags; torch's capability string ('AVX512', 'AMX') where /proc/cpuinfo is missing."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        import torch

        return "AMX" in torch.backends.cpu.get_cpu_capability().upper()


def _nvml_gpus(env: dict[str, str]) -> tuple[list[GPUInfo] | None, list[list[str]]]:
    """(None, []) when NVML is unavailable (no driver, no library)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # ImportError, or NVMLError subclasses such as LibraryNotFound / DriverNotLoaded
        return None, []
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        uuids = [nvml_text(pynvml.nvmlDeviceGetUUID(h)) for h in handles]
        handles = [handles[i] for i in visible_nvml_indices(env, len(handles), uuids)]
        gpus = []
        for index, h in enumerate(handles):
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            gpus.append(GPUInfo(index=index, name=nvml_text(pynvml.nvmlDeviceGetName(h)), memory_total_bytes=int(mem.total),
                                memory_free_bytes=int(mem.free), compute_capability=f"{major}.{minor}",
                                bf16=major >= 8))
        links = [[_nvml_link(pynvml, a, b) if a is not b else "self" for b in handles] for a in handles]
        return gpus, links
    finally:
        pynvml.nvmlShutdown()


def _nvml_link(pynvml, a, b) -> str:
    """nvlink when NVML reports NVLink P2P (direct or through NVSwitch) or an active link whose far end is `b`;
    else pcie, or sys when the path crosses the inter-socket bus."""
    try:
        if pynvml.nvmlDeviceGetP2PStatus(a, b, pynvml.NVML_P2P_CAPS_INDEX_NVLINK) == pynvml.NVML_P2P_STATUS_OK:
            return "nvlink"
    except pynvml.NVMLError:
        pass
    bus_b = nvml_text(pynvml.nvmlDeviceGetPciInfo(b).busId)
    for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
        try:
            if (pynvml.nvmlDeviceGetNvLinkState(a, link) == pynvml.NVML_FEATURE_ENABLED
                    and nvml_text(pynvml.nvmlDeviceGetNvLinkRemotePciInfo(a, link).busId) == bus_b):
                return "nvlink"
        except pynvml.NVMLError:
            break  # no (more) NVLinks on this device
    try:
        level = pynvml.nvmlDeviceGetTopologyCommonAncestor(a, b)
    except pynvml.NVMLError:
        return "unknown"
    return "sys" if level == pynvml.NVML_TOPOLOGY_SYSTEM else "pcie"


def _torch_gpus() -> tuple[list[GPUInfo], list[list[str]]]:
    """Fallback without NVML: names, memory and compute capability from torch; links unknown."""
    import torch

    if not torch.cuda.is_available():
        return [], []
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append(GPUInfo(index=i, name=p.name, memory_total_bytes=int(p.total_memory),
                            compute_capability=f"{p.major}.{p.minor}", bf16=p.major >= 8))
    n = len(gpus)
    return gpus, [["self" if i == j else "unknown" for j in range(n)] for i in range(n)]
