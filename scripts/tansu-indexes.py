#!/usr/bin/env python3
"""Create the indexes Tansu 0.6.0's SQLite schema lacks, on its live database file.

    scripts/tansu-indexes.py .run/tansu/tansu.db [--wait SECONDS] [--busy-timeout SECONDS]

Called by scripts/up before Tansu starts (when the file exists) and after it is ready.
Idempotent: an index already there is left alone. Why these indexes: docs/BROKER.md.

Tansu creates its tables itself, at start, before it listens (`create table if not
exists`, which leaves extra indexes alone, so they survive restarts). With --wait, this
waits up to SECONDS for those tables, for a broker that is still starting.

Prints one line per index ("present ..." or "created ... in N s (M rows)") on stdout.
Exit status: 0 done, 3 the file or Tansu's tables did not appear within --wait, 1 any
other error.
"""

import argparse
import sqlite3
import sys
import time

# (index name, table, columns). Plain (non-unique) indexes: they change no behaviour, only
# which rows a statement has to read. See docs/BROKER.md for the statements they serve.
INDEXES = [
    # sql/header_fetch.sql runs once per fetched record; without it every fetched record
    # reads every header ever stored. Also the child key of header's foreign key to record:
    # without it each record deleted by retention (ON DELETE CASCADE) scans all headers.
    ("wallet_header_topition_offset", "header", "topition, offset_id"),
    # watermark_select(_no_update).sql and watermark_update.sql run on every produce and
    # several times per fetched partition; the table has one row per partition ever
    # created (tests create private topics on every run) and no index on topition.
    ("wallet_watermark_topition", "watermark", "topition"),
    # lite/policy_delete.sql, the retention pass (every 10 minutes, in the task that serves
    # every request), tests `now - timestamp > retention.ms` on every record of each pruned
    # topic: no index can serve that expression, but this one covers it, so the pass reads
    # small index pages instead of every record's value. Measured on a copy of the broker's
    # file holding 720,000 records: the scan 1.4 s -> 0.22-0.35 s, a pass deleting 120,000
    # of them (ten minutes at 200 records/s) 3.5 s -> 2.0 s.
    ("wallet_record_topition_timestamp", "record", "topition, timestamp, offset_id"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db")
    parser.add_argument("--wait", type=float, default=0, help="seconds to wait for Tansu's tables")
    parser.add_argument(
        "--busy-timeout",
        type=float,
        default=30,
        help="seconds to wait for SQLite's write lock while Tansu writes",
    )
    args = parser.parse_args()

    tables = sorted({table for _, table, _ in INDEXES})
    deadline = time.monotonic() + args.wait
    db = None
    while True:
        missing = set(tables)
        try:
            if db is None:
                # mode=rw: never create the file (Tansu does, in its own directory).
                db = sqlite3.connect(
                    f"file:{args.db}?mode=rw",
                    uri=True,
                    timeout=args.busy_timeout,
                    isolation_level=None,
                )
            missing -= {
                name
                for (name,) in db.execute(
                    "select name from sqlite_master where type = 'table' and name in (%s)"
                    % ",".join("?" * len(tables)),
                    tables,
                )
            }
            problem = f"Tansu's tables {', '.join(sorted(missing))} are not in {args.db}"
        except sqlite3.OperationalError as e:  # no file yet, or not a database yet
            problem = f"cannot open {args.db}: {e}"
            if db is not None:
                db.close()
                db = None
        if db is not None and not missing:
            break
        if time.monotonic() >= deadline:
            print(problem + (f" after {args.wait:g} s" if args.wait else ""), file=sys.stderr)
            return 3
        time.sleep(0.2)

    for name, table, columns in INDEXES:
        exists = db.execute(
            "select 1 from sqlite_master where type = 'index' and name = ?", (name,)
        ).fetchone()
        if exists:
            print(f"present {table}({columns})")
            continue
        t = time.monotonic()
        # Holds SQLite's write lock while it builds: 0.09 s for 125,700 headers, measured
        # with a producer sending meanwhile and no delivery error. Tansu sets no busy
        # timeout, so a write of its that collided would fail rather than wait; scripts/up
        # therefore runs this before Tansu starts whenever it can.
        db.execute(f"create index if not exists {name} on {table} ({columns})")
        rows = db.execute(f"select count(*) from {table}").fetchone()[0]
        print(f"created {table}({columns}) in {time.monotonic() - t:.2f} s ({rows} rows)")
    db.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except sqlite3.Error as e:
        print(f"sqlite: {e}", file=sys.stderr)
        sys.exit(1)
