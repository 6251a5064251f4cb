"""Topology: detection on this (GPU-less) machine, the cluster view from the environment, described topologies."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import UserError
from launcher.cli import main
from engine.nvml import nvml_index, visible_nvml_indices
from launcher.topology import Topology, cluster_from_env, detect_topology, load_topology, parse_size

FIXTURES = Path(__file__).parent / "fixtures" / "topologies"


def test_detect_this_machine_reports_cpu_only():
    t = detect_topology(env={})
    assert t.gpus == [] and t.links == []
    assert t.cpu_cores >= 1 and t.ram_bytes > 2**30
    assert 0 < t.ram_available_bytes <= t.ram_bytes
    assert t.cluster.scheduler == "none" and t.nnodes == 1
    assert t.bf16 == t.cpu_bf16   # with no GPU the training device is the CPU
    assert Topology.from_dict(json.loads(json.dumps(t.to_dict()))) == t


@pytest.mark.parametrize("name,gpus,nnodes,nvlink,mem_gib", [
    ("h100x1", 1, 1, True, 79.6),
    ("a100x8-nvlink", 8, 1, True, 39.6),
    ("rtx4090x4-pcie", 4, 1, False, 24.0),
    ("h100x8-2nodes", 8, 2, True, 79.6),
    ("cpu-only", 0, 1, True, None),
])
def test_fixtures_load_with_the_json_schema(name, gpus, nnodes, nvlink, mem_gib):
    t = load_topology(FIXTURES / f"{name}.yaml")
    assert len(t.gpus) == gpus and t.nnodes == nnodes and t.all_nvlink(gpus) == nvlink
    assert t.source.startswith("file:")
    if mem_gib:
        assert t.gpus[0].memory_total_bytes / 2**30 == pytest.approx(mem_gib, abs=0.1)
        assert t.bf16 and all(g.bf16 for g in t.gpus)
    # the --json form reads back identically, as JSON too
    again = Topology.from_dict(json.loads(json.dumps(t.to_dict())))
    assert again == t


def test_topology_json_cli_round_trips(tmp_path, capsys):
    assert main(["topology", "--json", "--topology-file", str(FIXTURES / "rtx4090x4-pcie.yaml")]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "t.json"
    path.write_text(out)
    t = load_topology(path)
    assert [row[1] for row in t.links] == ["pcie", "self", "pcie", "pcie"]
    assert main(["topology", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gpus"] == []
    assert main(["topology"]) == 0
    assert "No GPU" in capsys.readouterr().out


def test_cluster_view_from_slurm_and_torchrun_variables():
    slurm = cluster_from_env({"SLURM_JOB_ID": "77", "SLURM_NNODES": "2", "SLURM_NTASKS": "4",
                              "SLURM_JOB_NODELIST": "n[1-2]", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4",
                              "RANK": "5", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1"})
    assert (slurm.scheduler, slurm.nnodes, slurm.job_id) == ("slurm", 2, "77")
    assert (slurm.ntasks, slurm.nodelist) == (4, "n[1-2]")
    assert (slurm.world_size, slurm.local_world_size, slurm.rank, slurm.local_rank) == (8, 4, 5, 1)
    assert slurm.master_addr == "10.0.0.1"
    torchrun = cluster_from_env({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "RANK": "0"})
    assert (torchrun.scheduler, torchrun.nnodes, torchrun.job_id) == ("torchrun", 2, None)
    assert cluster_from_env({}).nnodes == 1


def test_cuda_device_maps_to_its_nvml_index():
    """GPU utilisation reads NVML at this mapped index: under CUDA_VISIBLE_DEVICES=2,0, cuda:0 is NVML's GPU 2."""
    uuids = ["GPU-aa", "GPU-bb", "GPU-cc"]
    assert [nvml_index(i, {"CUDA_VISIBLE_DEVICES": "2,0"}, uuids) for i in (0, 1)] == [2, 0]
    assert nvml_index(0, {"CUDA_VISIBLE_DEVICES": "GPU-bb"}, uuids) == 1
    assert nvml_index(1, {}, uuids) == 1


def test_cuda_visible_devices_filters_nvml_indices():
    uuids = ["GPU-aaa", "GPU-bbb", "GPU-ccc"]
    assert visible_nvml_indices({}, 3, uuids) == [0, 1, 2]
    assert visible_nvml_indices({"CUDA_VISIBLE_DEVICES": "2,0"}, 3, uuids) == [2, 0]
    assert visible_nvml_indices({"CUDA_VISIBLE_DEVICES": "GPU-bb"}, 3, uuids) == [1]
    assert visible_nvml_indices({"CUDA_VISIBLE_DEVICES": ""}, 3, uuids) == []
    assert visible_nvml_indices({"CUDA_VISIBLE_DEVICES": "1,-1,2"}, 3, uuids) == [1]  # CUDA stops at the first invalid entry


def test_sizes_parse_binary_and_decimal():
    assert parse_size("80GiB", "x") == 80 * 2**30
    assert parse_size("80GB", "x") == 80 * 10**9
    assert parse_size("24G", "x") == 24 * 2**30
    assert parse_size(1024, "x") == 1024
    with pytest.raises(UserError, match="gpu-memory: expected a size"):
        parse_size("lots", "--gpu-memory")


def test_hand_written_topology_with_sizes_and_default_links(tmp_path):
    path = tmp_path / "box.yaml"
    path.write_text("hostname: box\ncpu_cores: 8\nram_bytes: 64GiB\ncpu_bf16: false\n"
                    "gpus:\n  - {index: 0, name: V100, memory_total_bytes: 32GiB, compute_capability: '7.0'}\n"
                    "  - {index: 1, name: V100, memory_total_bytes: 32GiB, compute_capability: '7.0'}\n")
    t = load_topology(path)
    assert t.ram_bytes == 64 * 2**30 and t.gpus[1].memory_total_bytes == 32 * 2**30
    assert not t.bf16 and t.links == [["self", "unknown"], ["unknown", "self"]] and not t.all_nvlink(2)


@pytest.mark.parametrize("text,message", [
    ("hostname: a\ncpu_cores: 1\nram_bytes: 1GiB\ncpu_bf16: false\ngpu: []\n", r"gpu: unknown key"),
    ("hostname: a\ncpu_cores: 1\ncpu_bf16: false\n", r"ram_bytes: required"),
    ("hostname: a\ncpu_cores: 1\nram_bytes: 1GiB\ncpu_bf16: false\n"
     "gpus: [{index: 0, name: g, memory_total_bytes: 1GiB}]\nlinks: [[self, nvlink]]\n",
     r"links: expected a 1x1 matrix"),
    ("hostname: a\ncpu_cores: 1\nram_bytes: 1GiB\ncpu_bf16: false\n"
     "gpus: [{index: 0, name: g, memory_total_bytes: 1GiB}, {index: 1, name: g, memory_total_bytes: 1GiB}]\n"
     "links: [[self, infiniband], [nvlink, self]]\n", r"links\[0\]\[1\]: must be one of"),
    ("hostname: a\ncpu_cores: 1\nram_bytes: 1GiB\ncpu_bf16: false\ncluster: {nnodes: 0}\n", r"cluster.nnodes"),
    ("[not, a, mapping]\n", r"expected a mapping"),
])
def test_bad_topology_files_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as err:
        load_topology(path)
    assert str(path) in str(err.value)


def test_missing_topology_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot read topology file"):
        load_topology(tmp_path / "nope.yaml")
