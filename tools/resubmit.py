"""List the project's SLURM jobs and resubmit the ones that stopped before finishing.

    python tools/resubmit.py                       # table of every chain under ./multirun
    python tools/resubmit.py multirun/2026-11-22   # ... under these run or sweep dirs
    python tools/resubmit.py --job 123 --job 130   # resubmit these chains (pretrain or eval id)
    python tools/resubmit.py --all                 # resubmit every resumable chain
    python tools/resubmit.py --all --dry-run       # say what would be resubmitted

A resubmitted chain runs with the same resolved config, run directory, code snapshot and
sbatch parameters; training continues from its newest complete checkpoint, logging into the
same MLflow run, and a new eval job waits for it. Chains still pending or running are refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.resubmit import (  # noqa: E402
    chain_states,
    find_records,
    format_table,
    resubmit,
    tag_run,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", default=["multirun"], help="run or sweep dirs")
    parser.add_argument("--job", action="append", default=[], help="a pretrain or eval job id")
    parser.add_argument("--all", action="store_true", help="every resumable chain")
    parser.add_argument("--dry-run", action="store_true", help="submit nothing")
    args = parser.parse_args(argv)

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"error: no such run or sweep directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        chains = chain_states(find_records(args.paths))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not chains:
        print(f"no job records (jobs.json) under {', '.join(args.paths)}")
        return 0 if not (args.job or args.all) else 1
    print(format_table(chains))
    if not (args.job or args.all):
        return 0

    chosen = chains
    if args.job:
        by_id = {}
        for c in chains:
            by_id[c.pretrain_id] = c
            if c.eval_id:
                by_id[c.eval_id] = c
        unknown = [j for j in args.job if j not in by_id]
        if unknown:
            print(f"error: no chain has job id {', '.join(unknown)}", file=sys.stderr)
            return 2
        chosen = list({id(by_id[j]): by_id[j] for j in args.job}.values())
    code = 0
    print()
    for chain in chosen:
        action, why = chain.action()
        if action is None:
            if args.job:  # asked for by id: refusing is an error
                print(f"refused: {chain.run_dir}: {why}", file=sys.stderr)
                code = 1
            continue
        if args.dry_run:
            print(f"would resubmit {action} of {chain.run_dir} ({why})")
            continue
        try:
            new = resubmit(chain, action)
        except (ValueError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            code = 1
            continue
        eval_id = (new.get("eval") or {}).get("job_id", "-")
        print(
            f"resubmitted {chain.run_dir} ({why}): pretrain job {new['pretrain']['job_id']}, "
            f"eval job {eval_id}"
        )
        # The run's tags name the new jobs now, not the cancelled eval (issue 21).
        warning = tag_run(new)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    if args.dry_run:
        print("dry run: nothing was submitted")
    return code


if __name__ == "__main__":
    sys.exit(main())
