"""Write docs/api.md, the API reference, from the public objects' signatures and docstrings.

    python scripts/api_reference.py            # rewrite docs/api.md
    python scripts/api_reference.py --check    # exit 1 if docs/api.md is out of date
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import lunet
from lunet import functional

OUT = Path(__file__).resolve().parents[1] / "docs" / "api.md"
FUNCTIONAL = ("softplus", "leaky_softplus", "leaky_softplus_derivative", "leaky_softplus_log_derivative",
              "leaky_softplus_inverse")


def _doc(obj: object) -> str:
    return inspect.getdoc(obj) or ""


def _signature(name: str, obj: object) -> str:
    try:
        return f"{name}{inspect.signature(obj)}"
    except (TypeError, ValueError):
        return name


def _public_methods(cls: type) -> list[tuple[str, object]]:
    """The class's own public methods and properties, and those it takes from lunet's bases that
    have no section of their own (the density face, say): not those of torch's, nor of a base
    documented beside it."""
    own: dict[str, object] = {}
    documented = {getattr(lunet, name) for name in lunet.__all__}
    bases = [k for k in cls.__mro__[1:] if k.__module__.startswith("lunet") and k not in documented]
    for klass in [*reversed(bases), cls]:
        for name, member in klass.__dict__.items():
            if name.startswith("_") or name == "extra_repr":
                continue
            if inspect.isfunction(member) or isinstance(member, (property, classmethod, staticmethod)):
                own.pop(name, None)
                own[name] = member
    return list(own.items())


def render() -> str:
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings by `python scripts/api_reference.py`; the guide",
        "([guide.md](guide.md)) shows the pieces at work.",
        "",
    ]
    for name in lunet.__all__:
        obj = getattr(lunet, name)
        lines += [f"## `lunet.{name}`", ""]
        lines += ["```python", _signature(name, obj), "```", "", _doc(obj), ""]
        if inspect.isclass(obj):
            for method, member in _public_methods(obj):
                target = member.fget if isinstance(member, property) else getattr(obj, method)
                label = method if isinstance(member, property) else _signature(method, target)
                summary = " ".join(_doc(target).split("\n\n")[0].split())
                lines += [f"- `{label}`" + (f": {summary}" if summary else "")]
            lines.append("")
    lines += ["## `lunet.functional`", "", _doc(functional), ""]
    for name in FUNCTIONAL:
        obj = getattr(functional, name)
        lines += [f"### `{name}`", "", "```python", _signature(name, obj), "```", "", _doc(obj), ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/api_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
