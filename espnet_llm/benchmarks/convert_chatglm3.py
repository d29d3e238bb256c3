"""Peak memory of ChatGLM3 conversion and loading on a random checkpoint with ChatGLM3-6B's real shapes.

    python -m espnet_llm.benchmarks.convert_chatglm3 [--num_layers 2] [--num_shards 4] [--dtype bfloat16]

Writes the checkpoint (official layout, real tensor shapes, fewer layers), then runs the converter and the
loader each in a fresh process and prints its peak resident memory (VmHWM) next to the
checkpoint size, the largest shard and the memory of a process that only imports the modules.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from espnet_llm.llm.chatglm3 import CHATGLM3_6B_CONFIG, checkpoint_shards
from espnet_llm.mini.tiny_chatglm3 import write_random_chatglm3_checkpoint

MIB = 2**20


# The child reports its own high-water mark: the rusage of a forked child would start from the parent's peak.
REPORT_PEAK = "import re; print(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))"


def run_measured(code: str) -> tuple[float, float]:
    """Run python code in a fresh process; return (its peak RSS in MiB, seconds)."""
    start = time.time()
    result = subprocess.run([sys.executable, "-c", f"{code}; {REPORT_PEAK}"], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark step failed: {code}\n{result.stderr}")
    return int(result.stdout.split()[-1]) / 1024, time.time() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--num_shards", type=int, default=4)
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--file_format", choices=["safetensors", "bin"], default="safetensors")
    parser.add_argument("--work_dir", type=Path, help="default: a temporary directory, removed afterwards")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.work_dir) as work_dir:
        official, converted = Path(work_dir) / "official", Path(work_dir) / "glm"
        config = {**CHATGLM3_6B_CONFIG, "num_layers": args.num_layers}
        start = time.time()
        write_random_chatglm3_checkpoint(
            config, official, num_shards=args.num_shards, file_format=args.file_format, dtype=getattr(torch, args.dtype)
        )
        shards = checkpoint_shards(official)
        sizes = [s.stat().st_size / MIB for s in shards]
        print(
            f"checkpoint: ChatGLM3-6B shapes, {args.num_layers} layers, {args.dtype}, {len(shards)} {args.file_format} "
            f"shards, {sum(sizes):.0f} MiB (largest shard {max(sizes):.0f} MiB), written in {time.time() - start:.1f} s"
        )
        imports = "import torch, espnet_llm.llm.chatglm3 as c"
        baseline, _ = run_measured(imports)
        print(f"peak RSS, imports only:         {baseline:7.0f} MiB")
        peak, seconds = run_measured(f"{imports}; c.convert_chatglm3({str(official)!r}, {str(converted)!r})")
        print(
            f"peak RSS, convert:              {peak:7.0f} MiB = imports + {peak - baseline:.0f} MiB "
            f"({(peak - baseline) / max(sizes):.2f} x largest shard, {(peak - baseline) / sum(sizes):.2f} x checkpoint), "
            f"{seconds:.1f} s"
        )
        for name, path in (("official", official), ("converted", converted)):
            peak, seconds = run_measured(f"{imports}; c.load_chatglm3({str(path)!r}, torch.{args.dtype})")
            print(
                f"peak RSS, load {name:9s} {args.dtype}: {peak:7.0f} MiB = imports + {peak - baseline:.0f} MiB "
                f"({(peak - baseline) / sum(sizes):.2f} x checkpoint), {seconds:.1f} s"
            )


if __name__ == "__main__":
    main()
