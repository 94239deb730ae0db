"""The file formats `shadowzoo export` writes (see :mod:`scorer.export`).

On its own so the CLI can offer them as choices without importing the exporter (and with
it DuckDB, Arrow and the scorer): `shadowzoo --help` lists every command's options.
"""

from __future__ import annotations

from enum import StrEnum


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    parquet = "parquet"
    csv = "csv"
    openai_chat = "openai-chat"
