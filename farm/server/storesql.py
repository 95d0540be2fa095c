"""The SQL of one batch's write: its adds, counts of retries and deletes in one transaction.

Split from farm/server/store.py, whose writer thread calls ``write_rows``.
"""

from __future__ import annotations

import sqlite3

from farm.server.storecheck import row_checksum

__all__ = ["COLUMNS", "IDS_A_STATEMENT", "ROWS_A_STATEMENT", "Row", "write_rows"]

#: The columns an INSERT writes: a ``Row``'s, then the checksum the writer thread adds.
COLUMNS = (
    "id",
    "function",
    "uniq",
    "data",
    "priority",
    "reducer",
    "run_at",
    "created",
    "local",
    "checksum",
)
#: Variables one statement may take in SQLite < 3.32 (RHEL 8, Ubuntu 20.04); later ones 32766.
MAX_VARIABLES = 999
#: Rows one INSERT writes, ids one DELETE names: within MAX_VARIABLES. Derived from the
#: columns: a fixed 100 rows, sized for 9, took 1000 variables once the checksum came, and
#: every burst of 100 adds failed there ("too many SQL variables"), the store marked broken.
ROWS_A_STATEMENT = MAX_VARIABLES // len(COLUMNS)
IDS_A_STATEMENT = 900

Row = tuple[int, bytes, bytes, bytes, int, bytes | None, float, float, bool]

_INSERT = f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES "
_ROW_VALUES = "(" + ", ".join(["?"] * len(COLUMNS)) + ")"


def write_rows(
    db: sqlite3.Connection,
    adds: list[Row],
    retries: dict[int, int],
    deletes: list[tuple[int]],
) -> None:
    """One transaction; rolled back and raised again when it fails."""
    try:
        # Many rows a statement: the writer thread waits for the GIL after each step, up to
        # 5 ms with the loop busy: a step a row (executemany) made a commit take seconds.
        db.execute("BEGIN")
        for at in range(0, len(adds), ROWS_A_STATEMENT):
            chunk = adds[at : at + ROWS_A_STATEMENT]
            values: list[object] = []
            for row in chunk:
                values += row
                # Here, in the writer thread, not at the submit: off the loop's time.
                values.append(row_checksum(row[1], row[2], row[3], row[4], row[5], row[6]))
            db.execute(_INSERT + ",".join([_ROW_VALUES] * len(chunk)), values)
        if retries:  # rare (a worker died)
            db.executemany(
                "UPDATE jobs SET retries = ? WHERE id = ?", [(n, i) for i, n in retries.items()]
            )
        for at in range(0, len(deletes), IDS_A_STATEMENT):
            ids = [row_id for (row_id,) in deletes[at : at + IDS_A_STATEMENT]]
            db.execute("DELETE FROM jobs WHERE id IN (" + ",".join(["?"] * len(ids)) + ")", ids)
        db.execute("COMMIT")
    except BaseException:  # any: a transaction left open fails every later commit
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise
