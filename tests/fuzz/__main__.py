"""``python -m tests.fuzz``: run the fuzz corpus on demand and print the outcome tables.

    python -m tests.fuzz --cases 500 --seed 1 --operations all --json fuzz.json
    python -m tests.fuzz --truncations           # every seed cut at every field boundary
    python -m tests.fuzz --case 1-205            # rerun one case, all operations, verbose
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from tests.fuzz import corpus, harness, seeds


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200, help="number of cases (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    parser.add_argument("--case", help="rerun one case by id (SEED-INDEX or cut-NAME-OFFSET)")
    parser.add_argument("--truncations", action="store_true",
                        help="instead: every seed cut at every protobuf field boundary (inspect, compile)")
    parser.add_argument("--operations", choices=["rotate", "all"], default="rotate",
                        help="rotate: inspect, default compile and 2 pass recipes per case; all: every pass")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case (default 300)")
    parser.add_argument("--json", help="write every outcome here")
    args = parser.parse_args()

    operations = None
    if args.case:
        cases, mode = [corpus.case_by_id(args.case)], "all"
    elif args.truncations:
        cases = (case for name in seeds.seed_names() for case in corpus.truncations(name))
        mode, operations = "all", ["inspect", "compile"]
    else:
        cases, mode = corpus.cases(args.cases, args.seed), args.operations
    results = harness.run(cases, timeout=args.timeout, mode=mode, operations=operations,
                          progress=_progress(args.case))
    print(harness.summary_markdown(results))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([dataclasses.asdict(r) for r in results], handle, indent=1)
    bad = harness.bad_outcomes(results)
    for result, outcome in bad:
        print(f"\n{result.case_id} ({result.seed}, {result.kind}: {result.detail}) "
              f"{outcome.operation}: {outcome.status} {outcome.error}\n{outcome.message}")
    return 1 if bad else 0


def _progress(verbose: bool):
    def report(result: harness.CaseResult) -> None:
        statuses = " ".join(f"{o.operation}={o.status}" for o in result.outcomes)
        print(f"{result.case_id} {result.seed} {result.kind}: {statuses}", file=sys.stderr, flush=True)
        if verbose:
            for outcome in result.outcomes:
                print(f"  {outcome.operation}: {outcome.error} {outcome.message}", file=sys.stderr)

    return report


if __name__ == "__main__":
    sys.exit(main())
