"""The operator surface: the `shadowzoo` CLI, and later the daemon, admin API and metrics."""
