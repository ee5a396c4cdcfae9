"""Summarise a py-spy ``--format raw`` profile (collapsed stacks) from bench/scale.py --profile.

    python bench/profile_top.py /tmp/prof/fleet-cold.txt [--top 25] [--thread MainThread]

Prints the share of samples per thread, then the functions with the most samples
on top of the stack (self) and anywhere in the stack (inclusive), as percentages
of all samples shown. With ``--gil`` profiles the shares are of GIL-holding time.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from collections.abc import Sequence
from pathlib import Path

_THREAD = re.compile(r"^thread \(\d+\): ?([^;]*)")
_LOCATION = re.compile(r" \((.*?):\d+\)$")


def frame_name(frame: str) -> str:
    """``func (path/file.py:12)`` -> ``func (path/file.py)``: lines merged."""
    return _LOCATION.sub(lambda m: f" ({m.group(1)})", frame)


def thread_group(name: str) -> str:
    """PoolThread-recsync-etcd-5 -> PoolThread-recsync-etcd; numbers dropped."""
    return re.sub(r"[-_]?\d+$", "", name) or "?"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--thread", help="only threads whose name starts with this")
    args = parser.parse_args(argv)
    per_thread: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = "?"
        match = _THREAD.match(frames[0])
        if match:
            thread = match.group(1) or "?"
            frames = frames[1:]
        group = thread_group(thread)
        if args.thread and not thread.startswith(args.thread):
            continue
        per_thread[group] += count
        total += count
        names = [frame_name(f) for f in frames if f]
        if names:
            self_time[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    if not total:
        print("no samples")
        return 1
    print(f"{total} samples")
    print("\nthreads:")
    for name, count in per_thread.most_common():
        print(f"  {100 * count / total:5.1f}%  {name}")
    print(f"\ntop {args.top} self:")
    for name, count in self_time.most_common(args.top):
        print(f"  {100 * count / total:5.1f}%  {name}")
    print(f"\ntop {args.top} inclusive:")
    for name, count in inclusive.most_common(args.top):
        print(f"  {100 * count / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
