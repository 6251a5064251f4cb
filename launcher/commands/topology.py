"""`dialsum topology`: GPUs, their link matrix, CPU, RAM and the cluster view this machine (or a file) describes."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("topology", help="show the detected hardware topology (GPUs, links, CPU, RAM, cluster)")
    parser.add_argument("--json", action="store_true", help="print it as JSON (the schema --topology-file reads)")
    parser.add_argument("--topology-file", default=None, help="show a described topology (YAML/JSON) instead")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from launcher.topology import detect_topology, load_topology

    topology = load_topology(args.topology_file) if args.topology_file else detect_topology()
    if args.json:
        print(json.dumps(topology.to_dict(), indent=2))
        return 0

    from launcher.display import console as make_console
    from rich.table import Table

    console = make_console()
    ram = f"{topology.ram_bytes / 2**30:.1f} GiB"
    if topology.ram_available_bytes is not None:
        ram += f" ({topology.ram_available_bytes / 2**30:.1f} GiB available)"
    console.print(f"[bold]{topology.hostname}[/bold] ({topology.source}): {topology.cpu_cores} CPU cores, RAM {ram}, "
                  f"CPU bf16 {'yes' if topology.cpu_bf16 else 'no'}")
    if topology.gpus:
        gpus = Table(title="GPUs")
        for column in ("#", "name", "memory", "free", "compute capability", "bf16"):
            gpus.add_column(column)
        for g in topology.gpus:
            free = "" if g.memory_free_bytes is None else f"{g.memory_free_bytes / 2**30:.1f} GiB"
            gpus.add_row(str(g.index), g.name, f"{g.memory_total_bytes / 2**30:.1f} GiB", free, g.compute_capability,
                         "yes" if g.bf16 else "no")
        console.print(gpus)
        links = Table(title="GPU-GPU links")
        links.add_column("")
        for g in topology.gpus:
            links.add_column(f"GPU{g.index}")
        for g, row in zip(topology.gpus, topology.links):
            links.add_row(f"GPU{g.index}", *("X" if k == "self" else k.upper() for k in row))
        console.print(links)
    else:
        console.print("No GPU: training runs on CPU ranks (gloo).")
    c = topology.cluster
    details = {k: v for k, v in vars(c).items() if v is not None and k not in ("scheduler", "nnodes")}
    console.print(f"Cluster: {c.scheduler}, {c.nnodes} node(s)"
                  + ("".join(f", {k}={v}" for k, v in details.items())))
    return 0
