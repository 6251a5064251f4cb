"""The end of the demo: how many dev dialogues got a distinct summary, and three dialogue / reference / prediction
examples from the newest run under an output root."""
from __future__ import annotations

import csv
import sys
import textwrap
from pathlib import Path

from engine.data import read_dialogues


def main(output_root: str, eval_file: str, count: int = 3) -> int:
    runs = sorted(Path(output_root).glob("runs/*/predictions.csv"), key=lambda p: p.stat().st_mtime)
    if not runs:
        print(f"no predictions under {output_root}/runs", file=sys.stderr)
        return 1
    with open(runs[-1], newline="") as fh:
        predictions = {row["fname"]: row["summary"] for row in csv.DictReader(fh)}
    dialogues = [d for d in read_dialogues(eval_file, require_summary=True) if d.fname in predictions]
    distinct = len(set(predictions.values()))
    print(f"\n{distinct} distinct summaries for {len(predictions)} dev dialogues ({runs[-1]})")
    for d in dialogues[:count]:
        print(f"\n--- {d.fname}")
        print(f"dialogue:   {textwrap.shorten(d.dialogue, 400, placeholder=' ...')}")
        print(f"reference:  {d.references[0]}")
        print(f"prediction: {predictions[d.fname]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
