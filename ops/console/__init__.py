"""The daemon's web console at /ui on the admin port: leaderboard, variants, history, status, jobs.

Server-rendered HTML (the report's CSS and SVG charts), no script, nothing loaded from
elsewhere; login with the admin token gives a session cookie; promote and rollback call
the same operations as the CLI. See `ops.console.app` for routes and how to add a page.
"""
