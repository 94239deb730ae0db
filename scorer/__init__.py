"""shadowzoo's scorer: metrics, net-of-cost values, paired sequential statistics, promotion policy."""
