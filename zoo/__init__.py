"""The zoo: declarative variant specs (load, validate, overlay, register) and, later, training."""

from zoo.register import RegisterOutcome, register_specs
from zoo.resolve import Resolved, resolve_spec
from zoo.skills import read_skill
from zoo.spec import ChatSpec, PythonParams, PythonSpec, Spec, SpecFile, Zoo, load_spec, load_zoo

__all__ = [
    "ChatSpec",
    "PythonParams",
    "PythonSpec",
    "RegisterOutcome",
    "Resolved",
    "Spec",
    "SpecFile",
    "Zoo",
    "load_spec",
    "load_zoo",
    "read_skill",
    "register_specs",
    "resolve_spec",
]
