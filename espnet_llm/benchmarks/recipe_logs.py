"""The speed and memory figures of recipe runs, read from the logs that ESPnet's trainer and the decoding write:
for each run directory, the mean training step time and the GPU's peak memory (ESPnet's ``train_time`` and
``gpu_max_cached_mem_GB`` of each epoch's results, the last epoch's shown) and each decoded set's real-time factor.

    python -m espnet_llm.benchmarks.recipe_logs exp/full_size_benchmark/exp/decoder_only/short ...

Prints one markdown row per run (local/full_size_benchmark.sh puts them beside docs/benchmarks.md's plan).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

EPOCH_RESULTS = re.compile(r"(\d+)epoch results: \[train\] (.*?)(?:, \[valid\]|$)")
DECODE_DONE = re.compile(r"done: (\d+) utterances in ([\d.]+) s \(RTF ([\d.]+)\)")


def training_figures(train_log: Path) -> dict[str, float]:
    """The last epoch's training figures: steps, train_time (s a step), gpu_max_cached_mem_GB (on a GPU)."""
    last = None
    for line in train_log.read_text(encoding="utf-8", errors="replace").splitlines():
        match = EPOCH_RESULTS.search(line)
        if match:
            last = match
    if last is None:
        raise ValueError(f"{train_log}: no epoch results: the run has not finished an epoch")
    values = dict(item.split("=", 1) for item in last.group(2).split(", ") if "=" in item)
    figures = {"epoch": int(last.group(1)), "steps": float(values["total_count"]) / int(last.group(1)),
               "step_s": float(values["train_time"])}
    if "gpu_max_cached_mem_GB" in values:
        figures["peak_GB"] = float(values["gpu_max_cached_mem_GB"])
    return figures


def decoding_rtfs(run_dir: Path) -> dict[str, float]:
    """Each decoded set's real-time factor (the slowest job's, as a set is done when its last job is), named
    <decoding>/<set> where the run was decoded more than one way."""
    rtfs: dict[str, float] = {}
    logs = sorted(run_dir.glob("decode_*/*/logdir/inference.*.log"))
    several = len({log.parents[2] for log in logs}) > 1
    for log in logs:
        for match in DECODE_DONE.finditer(log.read_text(encoding="utf-8", errors="replace")):
            dset = f"{log.parents[2].name}/{log.parents[1].name}" if several else log.parents[1].name
            rtfs[dset] = max(rtfs.get(dset, 0.0), float(match.group(3)))
    return rtfs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    print("| run | steps an epoch | step time s | peak GPU memory GB | decoding RTF |")
    print("|---|---|---|---|---|")
    for run in args.run_dirs:
        train = training_figures(run / "train.log")
        rtf = ", ".join(f"{dset} {value:.4f}" for dset, value in decoding_rtfs(run).items()) or "-"
        peak = f"{train['peak_GB']:.1f}" if "peak_GB" in train else "- (CPU)"
        print(f"| {run.parent.name}/{run.name} | {train['steps']:.0f} | {train['step_s']:.3f} | {peak} | {rtf} |")


if __name__ == "__main__":
    main()
