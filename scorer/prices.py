"""The registry's copy of the prices in force (see `shadow.pricing` for where they come from).

Keeping them in the database lets the scorer join them in SQL, and records which prices a
leaderboard was computed with; a change starts a new evaluation period.
"""

from __future__ import annotations

from registry import Database, Workspace, utcnow
from registry.workspace_config import Price
from shadow.pricing import PRICE_FIELDS, effective_prices

def sync_prices(database: Database, workspace: Workspace) -> dict[str, Price]:
    """Make the registry's price table match the workspace; return the prices in force."""
    prices = effective_prices(workspace)
    rows = [[model, *(getattr(price, f) for f in PRICE_FIELDS), source, utcnow()]
            for model, (price, source) in sorted(prices.items())]
    with database.transaction() as db:
        current = db.execute(f"SELECT model, {', '.join(PRICE_FIELDS)}, source FROM prices ORDER BY model").fetchall()
        if [tuple(row[:-1]) for row in rows] != [tuple(row) for row in current]:
            db.execute("DELETE FROM prices")
            if rows:
                db.executemany(f"INSERT INTO prices VALUES ({', '.join('?' * (len(PRICE_FIELDS) + 3))})", rows)
    return {model: price for model, (price, _) in prices.items()}
