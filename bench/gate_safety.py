"""Gate safety, model-based: random sequences against the agent's decision path, invariants after every step.

Each sequence starts a fresh simulated site and agent (:mod:`simulators.gate_model`:
the agent's drivers, bus owner, sink and response controller, in-process
against the simulated devices over real Modbus PDUs, on a manual clock) and
plays random steps: water levels, the immersion contact, time, sensor
timeouts, stuck values, out-of-range and status-register faults, board power
cycles and outages, gate limit switches that both read made or never arrive,
the override key, remote commands (some interleaved with a poll), the broker
and the bus adapter going down, and the calm after a storm (dry, faults
fixed, key off). After every step the invariants are checked
(see the model's docstring). Prints sequences tried, steps and violations,
and how often each invariant was exercised.

    .venv/bin/python bench/gate_safety.py [--steps 100000] [--per-sequence 250] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simulators.gate_model import Run, explore, model_site, quiet


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100_000, help="steps in all (default 100,000)")
    ap.add_argument("--per-sequence", type=int, default=250, help="steps per sequence")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--show", type=int, default=3, help="violating sequences to print in full")
    args = ap.parse_args()
    quiet()
    sequences = max(1, args.steps // args.per_sequence)
    started = time.monotonic()
    last = [started]

    def progress(run: Run) -> None:
        now = time.monotonic()
        if now - last[0] >= 10:
            last[0] = now
            bad = len(run.violations)
            print(f"  … {run.sequences} sequences, {run.steps} steps, {bad} violating", flush=True)

    with tempfile.TemporaryDirectory(prefix="floodgate-gate-safety-") as tmp:
        site = model_site(Path(tmp))
        run = asyncio.run(explore(site, args.seed, sequences, args.per_sequence, progress))
    took = time.monotonic() - started
    print(f"gate safety, seed {args.seed}: {run.sequences} sequences tried, {run.steps} steps")
    print(f"  violations: {len(run.violations)} sequences")
    print(f"  {took:.0f} s, {run.steps / took:.0f} steps/s")
    print("  steps by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(run.actions.items())))
    print("  invariants exercised:")
    for what, n in sorted(run.seen.items()):
        print(f"    {what}: {n}")
    for index, violations, tail in run.violations[: args.show]:
        print(f"\nsequence {index} (replay: seed {args.seed}, index {index}): {violations[0]}")
        for line in violations[1:5]:
            print(f"  and: {line}")
        print("  the steps before it:")
        for action in tail:
            print(f"    {action}")
    return 1 if run.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
