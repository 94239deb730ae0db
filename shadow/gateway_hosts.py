"""Forgetting a gateway host taken out of service (`backend: distributed`).

Each gateway host reports to the control plane: its shipper in `spool_shipping`, its route
follower in `route_followers`. `status` lists every host that ever reported and warns about one
that stopped, since a silent host may hold captures it has not shipped. A host that was
decommissioned (an autoscaled gateway, a retired machine) would be warned about forever:
forgetting it deletes its reports. A host still running reports again within seconds, so one
that reported lately is refused rather than forgotten for a moment. Its segments already in
the bucket are not touched: ingest takes them, and `status` shows them until it has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

from registry.distributed import connect_control
from registry.errors import NotFound, Refused
from shadow.shipping_report import SILENT_AFTER_S

if TYPE_CHECKING:
    from registry.workspace_config import DistributedConfig


class ForgottenHost(BaseModel):
    """A gateway host whose reports were deleted, and how long it had been silent."""

    host: str
    silent_s: float


_LAST_REPORT = """
SELECT extract(epoch FROM (now() AT TIME ZONE 'UTC') - max(seen))
FROM (SELECT seen_at AS seen FROM spool_shipping WHERE host = %(host)s
      UNION ALL SELECT checked_at FROM route_followers WHERE host = %(host)s) AS reports
"""


def forget_gateway_host(settings: DistributedConfig, host: str) -> ForgottenHost:
    """Delete `host`'s reports; NotFound when it never reported, Refused when it reported lately."""
    with connect_control(settings) as connection, connection.transaction():
        silent_s = connection.execute(_LAST_REPORT, {"host": host}).fetchone()[0]
        if silent_s is None:
            known = [row[0] for row in connection.execute(
                "SELECT host FROM spool_shipping UNION SELECT host FROM route_followers ORDER BY 1")]
            raise NotFound(f"no gateway host {host!r} has reported (known: {', '.join(known) or 'none'})")
        if silent_s < SILENT_AFTER_S:
            raise Refused(f"gateway host {host!r} reported {float(silent_s):.0f} s ago: it still runs, and would "
                          f"report again; stop its gateway first (forget it once silent for {SILENT_AFTER_S:g} s)")
        for table in ("spool_shipping", "route_followers"):
            connection.execute(f"DELETE FROM {table} WHERE host = %s", [host])
    return ForgottenHost(host=host, silent_s=round(float(silent_s), 1))
