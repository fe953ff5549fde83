"""Time in the kernel, page faults and wall time of `r2scp extract` with glibc's default malloc settings
and with the ones every r2scp command sets (`config.keep_freed_memory`), measured in one run.

Each variant runs the CLI in a child process (its spawned workers included in the figures); glibc's
defaults are forced with a tunable at its default value (a user's own glibc.malloc tunables win over
r2scp's). The two variants alternate, `--repeats` times each.

    python bench/allocator.py [--videos 400] [--size 112] [--encoder pretrained] [--keep DIR] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from r2scp_cli.config import SynthConfig
from r2scp_cli.synth import dataset as synth

VARIANTS = {
    "glibc defaults": "glibc.malloc.tcache_count=7",  # the default value: r2scp then leaves malloc alone
    "kept (r2scp)": None,
}


def run_cli(arguments: list[str], tunables: str | None) -> dict[str, float]:
    """Wall, user, system seconds, minor page faults and peak memory of one r2scp command."""
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "r2scp_cli", *arguments], env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)  # this command's own figures, its waited-for workers included
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise SystemExit(f"r2scp {' '.join(arguments)} failed ({code})")
    return {"wall": wall, "user": usage.ru_utime, "system": usage.ru_stime, "faults": usage.ru_minflt,
            "peak_mib": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=400)
    parser.add_argument("--size", type=int, default=112, help="frame size of a new built-in dataset (the demo's)")
    parser.add_argument("--encoder", default="pretrained")
    parser.add_argument("--keep", type=Path, default=None, help="dataset directory to reuse / keep")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch) / "data"
        if not (root / "videos").is_dir():
            synth.run(SynthConfig(out=root, videos=args.videos, size=args.size))
        results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
        for repeat in range(args.repeats):
            for name, tunables in VARIANTS.items():
                out = Path(scratch) / f"features-{repeat}-{len(results[name])}-{name[:4]}.h5"
                results[name].append(run_cli(["extract", str(root), "--out", str(out), "--encoder", args.encoder,
                                              "--force"], tunables))  # fmt: skip
    print(f"r2scp extract --encoder {args.encoder}, {args.videos} clips, {os.cpu_count()} cores; mean of {args.repeats}")
    means = {}
    for name, runs in results.items():
        means[name] = {key: sum(r[key] for r in runs) / len(runs) for key in runs[0]}
        m = means[name]
        print(f"  {name:15s} wall {m['wall']:6.1f} s  user {m['user']:6.1f} s  system {m['system']:5.1f} s  "
              f"page faults {m['faults'] / 1e6:5.2f} M  peak {m['peak_mib']:6.0f} MiB")  # fmt: skip
    base, kept = means["glibc defaults"], means["kept (r2scp)"]
    print(f"  defaults / kept: wall {base['wall'] / kept['wall']:.2f}x, system time "
          f"{base['system'] / max(kept['system'], 1e-9):.1f}x, page faults {base['faults'] / max(kept['faults'], 1):.1f}x")


if __name__ == "__main__":
    main()
