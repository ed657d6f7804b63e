"""Scale-out: do two hub processes in one share group store faster than one, on the same backend, in the same run?

Each round runs the bare paho subscriber, one hub and two hubs back to back on the same workload (the scenarios of
``ingest.py``, whose code this reuses), so that the machine's load drifts as little as possible between the three.
Every hub run is checked for zero loss. The verdict compares the medians of the two hub scenarios, each as a
fraction of its own round's baseline, and also their raw rates.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace

from _harness import progress, run_guarded, table
from ingest import BACKENDS, Params, RunResult, build_payloads, device_ids, run_baseline, run_hub


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--devices", type=int, default=20, help="simulated devices (default 20)")
    p.add_argument("--messages", type=int, default=2500, help="telemetry messages per device (default 2500)")
    p.add_argument("--readings-per-message", type=int, default=3, help="readings in each message (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of baseline, one hub, two hubs (default 3)")
    p.add_argument("--processes", type=int, default=4, help="publisher processes (default 4)")
    p.add_argument("--backend", choices=BACKENDS, default="postgresql+victoriametrics",
                   help="where the hubs store (default postgresql+victoriametrics)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print the table; exit 0 when two hubs beat one, 1 when not, 2 when a run fails."""
    args = _parser().parse_args(argv)
    one = Params(args.devices, args.messages, args.readings_per_message, args.rounds, args.processes, 1, args.backend)
    two = replace(one, hubs=2)
    if min(one.devices, one.messages, one.readings, one.runs, one.processes) < 1:
        _parser().error("every count must be at least 1")
    progress(f"building {one.total:,} payloads ({one.devices} devices x {one.messages} messages x {one.readings} "
             "readings)")
    payloads = {d: build_payloads(d, one.messages, one.readings) for d in device_ids(one.devices)}
    rounds: list[tuple[RunResult, RunResult, RunResult]] = []

    def scenarios() -> None:
        for n in range(1, args.rounds + 1):
            rounds.append((run_baseline(one, payloads, n), run_hub(one, payloads, n), run_hub(two, payloads, n)))

    status = run_guarded(scenarios)
    if status is not None:
        return status
    rows = [("round", "baseline msg/s", "1 hub msg/s", "2 hubs msg/s", "1 hub/baseline", "2 hubs/baseline",
             "2 hubs/1 hub")]
    for n, (base, x1, x2) in enumerate(rounds, 1):
        rows.append((str(n), f"{base.msg_per_s:,.0f}", f"{x1.msg_per_s:,.0f}", f"{x2.msg_per_s:,.0f}",
                     f"{x1.msg_per_s / base.msg_per_s:.2f}", f"{x2.msg_per_s / base.msg_per_s:.2f}",
                     f"{x2.msg_per_s / x1.msg_per_s:.2f}"))
    speedup = statistics.median(x2.msg_per_s / x1.msg_per_s for _, x1, x2 in rounds)
    rows.append(("median", f"{statistics.median(b.msg_per_s for b, _, _ in rounds):,.0f}",
                 f"{statistics.median(x1.msg_per_s for _, x1, _ in rounds):,.0f}",
                 f"{statistics.median(x2.msg_per_s for _, _, x2 in rounds):,.0f}",
                 f"{statistics.median(x1.msg_per_s / b.msg_per_s for b, x1, _ in rounds):.2f}",
                 f"{statistics.median(x2.msg_per_s / b.msg_per_s for b, _, x2 in rounds):.2f}", f"{speedup:.2f}"))
    print("\n".join(table(rows)))
    verdict = "PASS" if speedup > 1 else "FAIL"
    print(f"{verdict}: two hub processes on {args.backend} store {speedup:.2f}x what one stores (median of "
          f"{args.rounds} rounds; every hub run with zero loss)")
    return 0 if speedup > 1 else 1


if __name__ == "__main__":
    sys.exit(main())
