"""NVML's device numbering: NVML counts every GPU, CUDA only those CUDA_VISIBLE_DEVICES leaves visible. The launcher's
topology and a rank's GPU utilisation both translate through here."""
from __future__ import annotations


def visible_nvml_indices(env: dict[str, str], count: int, uuids: list[str]) -> list[int]:
    """NVML indices CUDA_VISIBLE_DEVICES leaves visible (NVML itself ignores the variable)."""
    spec = env.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return list(range(count))
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if item.isdigit() and int(item) < count:
            out.append(int(item))
        elif item.startswith(("GPU-", "MIG-")):
            out += [i for i, u in enumerate(uuids) if u.startswith(item)]
        else:
            break  # CUDA stops at the first invalid entry
    return out


def nvml_index(cuda_index: int, env: dict[str, str], uuids: list[str]) -> int:
    """The NVML index of this process's CUDA device `cuda_index`: CUDA numbers only the devices CUDA_VISIBLE_DEVICES
    leaves visible, NVML numbers all of them (`uuids`, in NVML order)."""
    return visible_nvml_indices(env, len(uuids), uuids)[cuda_index]


def nvml_text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
