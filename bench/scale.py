"""A MUSIC-AVQA-sized run of the whole chain on CPU (DESIGN sections 8 and 10; issue 16).

synth (the built-in generator, about 9,300 clips as MUSIC-AVQA's 9,288) and a library of as many
clips -> extract both (handcrafted) -> build-bank --library -> train-experts (cmr+cap) -> train-router
-> eval --missing audio. Every stage runs as its own `r2scp` process; per stage it prints the wall
time, the CPU time of the process tree, the peak resident memory of the process tree (sampled from
/proc every 0.2 s, so all workers of a stage count together) and of its largest process (from the
kernel's rusage), and the throughput. Goals (issue 16): the whole run, synth included, within 30
minutes and 8 GiB on 2 CPU cores. Other processes on the same cores slow every number down: the load average is
printed before and after each stage.

    python bench/scale.py [--videos 9300] [--out runs/scale] [--size 224] [--experts-epochs 3]
                          [--router-epochs 2] [--from STAGE]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from r2scp_cli import artifacts
from r2scp_cli.features import FeatureStore

GIB = 1 << 30
TICK = os.sysconf("SC_CLK_TCK")


def r2scp() -> str:
    """The `r2scp` console script of this environment."""
    beside = Path(sys.executable).parent / "r2scp"
    return str(beside) if beside.exists() else shutil.which("r2scp") or "r2scp"


def tree_sample(pid: int, cpu: dict[int, float]) -> int:
    """Resident bytes of a process and all its descendants (0 once it is gone); records the CPU
    seconds of each in ``cpu`` (pid -> user + system), so workers that exit early still count."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            cpu[p] = (int(fields[11]) + int(fields[12])) / TICK
            with open(f"/proc/{p}/status") as status:
                total += next((int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as children:
                    todo.extend(int(c) for c in children.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
    return total


@dataclasses.dataclass
class Measure:
    wall: float
    cpu: float
    tree_peak: int  # bytes, sampled
    process_peak: int  # bytes, largest single process (rusage)
    load: tuple[float, float]  # 1-minute load average before and after


def run_stage(argv: list[str], log: Path) -> Measure:
    """Run one `r2scp` command, its output into ``log``; fail loudly if it fails."""
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen([r2scp(), *argv], stdout=out, stderr=subprocess.STDOUT)
        peak, cpu = 0, {}
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, tree_sample(process.pid, cpu))
            time.sleep(0.2)
    # rusage counts the descendants the command waited for; samples count the others (a forkserver's).
    cpu_seconds = max(usage.ru_utime + usage.ru_stime, sum(cpu.values()))
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"r2scp {' '.join(argv)} failed (exit {process.returncode}); see {log}")
    return Measure(wall, cpu_seconds, peak, usage.ru_maxrss * 1024, (load_before, os.getloadavg()[0]))


def synth_argv(out: Path, videos: int, seed: int, size: int, library: bool) -> list[str]:
    return ["synth", str(out), "--videos", str(videos), "--seed", str(seed), "--size", str(size), "--force",
            *(["--library"] if library else [])]  # fmt: skip


def stages(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(name, argv) of each stage, in order."""
    out = args.out
    return [
        ("synth", synth_argv(out / "data", args.videos, 0, args.size, False)),
        ("synth library", synth_argv(out / "library", args.videos, 1, args.size, True)),
        ("extract", ["extract", str(out / "data"), "--out", str(out / "features.h5"), "--force"]),
        ("extract library", ["extract", str(out / "library"), "--out", str(out / "library.h5"), "--force", "--library"]),
        ("build-bank", ["build-bank", str(out / "features.h5"), "--library", str(out / "library.h5"),
                        "--out", str(out / "bank"), "--force"]),  # fmt: skip
        ("train-experts", ["train-experts", str(out / "features.h5"), "--bank", str(out / "bank"), "--out",
                           str(out / "experts"), "--recovery", "cmr+cap", "--epochs", str(args.experts_epochs), "--force"]),  # fmt: skip
        ("train-router", ["train-router", str(out / "experts"), "--out", str(out / "router"),
                          "--epochs", str(args.router_epochs), "--force"]),  # fmt: skip
        ("eval", ["eval", str(out / "router"), "--out", str(out / "eval-audio"), "--missing", "audio", "--force"]),
    ]


def throughput(name: str, args: argparse.Namespace, wall: float) -> str:
    """Items per second of a finished stage, from its inputs and its meta.json."""
    out = args.out
    if name.startswith(("synth", "extract")):
        return f"{args.videos / wall:.1f} clips/s"
    if name == "build-bank":
        figures = artifacts.read_json(artifacts.meta_path(out / "bank"))["figures"]
        return f"{2 * figures['query_videos'] / wall:.0f} queries/s ({figures['entries']} entries)"
    with FeatureStore(out / "features.h5") as store:
        questions = {split: len(store.questions.rows(split)) for split in ("train", "test")}
    if name.startswith("train"):
        figures = artifacts.read_json(artifacts.meta_path(out / name.split("-")[1]))["figures"]
        return f"{questions['train'] * figures['epochs'] / wall:.0f} samples/s ({figures['epochs']} epochs)"
    return f"{questions['test'] / wall:.0f} samples/s ({questions['test']} questions)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=9300, help="clips of the dataset and of the library")
    parser.add_argument("--out", type=Path, default=Path("runs/scale"))
    parser.add_argument("--size", type=int, default=224, help="frame size of the synthesised clips")
    parser.add_argument("--experts-epochs", type=int, default=3)
    parser.add_argument("--router-epochs", type=int, default=2)
    parser.add_argument("--from", dest="start", default="synth", help="skip the stages before this one (outputs kept)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    plan = stages(args)
    names = [name for name, _ in plan]
    if args.start not in names:
        sys.exit(f"--from {args.start}: choose one of {', '.join(names)}")
    plan = plan[names.index(args.start) :]
    print(f"{args.videos} clips + a library of {args.videos}, {args.size} px, handcrafted, {os.cpu_count()} CPUs, "
          f"cmr+cap {args.experts_epochs}+{args.router_epochs} epochs, eval --missing audio; logs in {args.out}")  # fmt: skip
    header = f"{'stage':<16} {'wall s':>8} {'CPU s':>8} {'tree peak':>10} {'max proc':>9} {'load':>10}  throughput"
    print(header, flush=True)
    measured = {}
    for name, argv in plan:
        m = run_stage(argv, args.out / f"{name.replace(' ', '-')}.log")
        measured[name] = m
        print(f"{name:<16} {m.wall:>8.1f} {m.cpu:>8.1f} {m.tree_peak / GIB:>6.2f} GiB {m.process_peak / GIB:>5.2f} GiB "
              f"{m.load[0]:>4.1f}->{m.load[1]:<4.1f}  {throughput(name, args, m.wall)}", flush=True)  # fmt: skip
    after_synth = [m for name, m in measured.items() if not name.startswith("synth")]
    print(f"total {sum(m.wall for m in measured.values()):.0f} s (goal: the whole run within 1800 s), of which synth "
          f"{sum(m.wall for name, m in measured.items() if name.startswith('synth')):.0f} s and the rest "
          f"{sum(m.wall for m in after_synth):.0f} s; peak memory of any stage "
          f"{max(m.tree_peak for m in measured.values()) / GIB:.2f} GiB (goal 8 GiB)")  # fmt: skip


if __name__ == "__main__":
    main()
