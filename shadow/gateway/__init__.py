"""The OpenAI-compatible gateway: the champion path.

Import its modules by name (`shadow.gateway.serve`, `.app`, ...): the package imports none of
them, so a light one (`address`, `prometheus_metrics`) does not load the server.
"""
