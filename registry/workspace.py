"""A workspace: the directory holding `shadowzoo.yaml`, the zoo of specs and the state directory,
and loading it (the config checked against `registry.workspace_config`'s schema, then what the schema
alone cannot check: that python metrics' entrypoints can be found)."""

from __future__ import annotations

from pathlib import Path

from registry.workspace_config import CONFIG_FILE, PythonMetric, SlotConfig, WorkspaceConfig
from registry.entrypoints import check_entrypoint
from registry.errors import ConfigError
from registry.yamlfile import load_model


class Workspace:
    """A directory holding `shadowzoo.yaml`, the zoo of specs and the state directory."""

    def __init__(self, root: Path, config: WorkspaceConfig) -> None:
        self.root = root.resolve()
        self.config = config

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def state_dir(self) -> Path:
        return (self.root / self.config.state_dir).resolve()

    @property
    def db_path(self) -> Path:
        return self.state_dir / "shadowzoo.duckdb"

    @property
    def spill_dir(self) -> Path:
        """Where DuckDB spills what exceeds its memory limit: beside a DuckDB file DuckDB's own
        default (`<file>.tmp`); the distributed backend's in-memory DuckDB is pointed there too
        (its default, `.tmp` in the working directory, may be anywhere or unwritable)."""
        return self.state_dir / "shadowzoo.duckdb.tmp"

    @property
    def database(self) -> str:
        """Where the database is, for people: the DuckDB file, or the control plane and the lake."""
        distributed = self.config.distributed
        if self.config.backend == "distributed" and distributed is not None:
            return (f"{distributed.postgres_url} (control plane and lake catalog), "
                    f"s3://{distributed.object_store.bucket}/{distributed.lake_prefix} (lake data)")
        return str(self.db_path)

    @property
    def routes_path(self) -> Path:
        return self.state_dir / "routes.json"

    @property
    def specs_dir(self) -> Path:
        return (self.root / self.config.zoo.specs).resolve()

    @property
    def python_roots(self) -> list[Path]:
        """Where python entrypoints may be found: the workspace, then its `python_path`."""
        return [self.root] + [(self.root / entry).resolve() for entry in self.config.python_path]

    def slot(self, name: str) -> SlotConfig:
        """The slot's config, or an error listing the configured slots."""
        try:
            return self.config.slots[name]
        except KeyError:
            known = ", ".join(sorted(self.config.slots)) or "none"
            raise ConfigError(f"{self.config_path}: slot {name!r} is not configured (slots: {known})") from None


def load_workspace(root: Path) -> Workspace:
    """Load the workspace at `root`, or explain how to create one."""
    path = root / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            f"no {CONFIG_FILE} in {root.resolve()}: create a workspace with `shadowzoo init DIR`, "
            f"or point at one with --workspace DIR (or SHADOWZOO_WORKSPACE)"
        )
    workspace = Workspace(root, load_model(path, WorkspaceConfig))
    for slot_name, slot in workspace.config.slots.items():
        for index, metric in enumerate(slot.metrics):
            if isinstance(metric, PythonMetric):
                try:
                    check_entrypoint(metric.entrypoint, workspace.python_roots)
                except ConfigError as exc:
                    raise ConfigError(f"{path}: slots.{slot_name}.metrics[{index}].entrypoint: {exc}") from None
    return workspace
