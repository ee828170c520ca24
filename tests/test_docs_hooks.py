"""docs/hooks.md documents exactly the hooks of microvm.hookspecs, with their arguments."""
from __future__ import annotations

import re
from pathlib import Path

import pluggy
import pytest

from microvm import hookspecs

DOC = Path(__file__).resolve().parent.parent / "docs" / "hooks.md"
HOOK_HEADING = re.compile(r"^## ([A-Za-z_][A-Za-z0-9_]*)\s*$")


def specs() -> dict[str, tuple[tuple[str, ...], dict]]:
    """name -> (argument names, options) of every hookspec, through pluggy's public API."""
    pm = pluggy.PluginManager("microvm")
    pm.add_hookspecs(hookspecs)
    out = {}
    for name in dir(hookspecs):
        if pm.parse_hookspec_opts(hookspecs, name) is not None:
            caller = getattr(pm.hook, name)
            out[name] = (caller.spec.argnames, caller.spec.opts)
    return out


def sections() -> dict[str, str]:
    """``## name`` sections whose heading is a bare identifier (a hook), with their text."""
    out: dict[str, str] = {}
    current: str | None = None
    for line in DOC.read_text().splitlines():
        if line.startswith("## ") or line.startswith("# "):
            m = HOOK_HEADING.match(line)
            current = m.group(1) if m else None
            if current is not None:
                assert current not in out, f"two sections for {current}"
                out[current] = ""
            continue
        if current is not None:
            out[current] += line + "\n"
    return out


def other_section(title: str) -> str:
    text = DOC.read_text()
    m = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"no '## {title}' section"
    return m.group(1)


def test_the_hookspecs_are_found() -> None:
    assert len(specs()) >= 12 and "handle_exit" in specs()


def test_every_hook_has_a_section() -> None:
    missing = set(specs()) - set(sections())
    assert not missing, f"docs/hooks.md lacks a section for {sorted(missing)}"


def test_no_section_for_a_hook_that_does_not_exist() -> None:
    extra = set(sections()) - set(specs())
    assert not extra, f"docs/hooks.md documents hooks that do not exist: {sorted(extra)}"


@pytest.mark.parametrize("name", sorted(specs()))
def test_section_mentions_every_argument(name: str) -> None:
    argnames, _ = specs()[name]
    text = sections()[name]
    for arg in argnames:
        assert re.search(rf"`{arg}`", text), f"section {name} does not mention argument `{arg}`"


@pytest.mark.parametrize("name", sorted(specs()))
def test_section_shows_the_signature(name: str) -> None:
    argnames, _ = specs()[name]
    text = sections()[name]
    m = re.search(rf"^{name}\((.*)\)", text, re.M)
    assert m, f"section {name} has no signature line"
    assert split_top_level(m.group(1)) == argnames


def split_top_level(params: str) -> tuple[str, ...]:
    """Parameter names of ``a: T[x, y], b: U``, ignoring commas inside brackets."""
    names, depth, cur = [], 0, ""
    for c in params + ",":
        if c == "," and depth == 0:
            if cur.strip():
                names.append(cur.split(":")[0].strip())
            cur = ""
            continue
        depth += (c in "[(") - (c in "])")
        cur += c
    return tuple(names)


def test_split_top_level() -> None:
    assert split_top_level("register: Callable[[str, Callable[[M], Any], str], None]") == ("register",)
    assert split_top_level("machine: Machine, vcpu_id: int, entries: list[dict[str, int]]") == (
        "machine", "vcpu_id", "entries",
    )


@pytest.mark.parametrize("name", sorted(specs()))
def test_section_says_when_and_since(name: str) -> None:
    text = sections()[name]
    assert "**When:**" in text
    doc = getattr(hookspecs, name).__doc__ or ""
    since = re.search(r"\.\. versionadded:: (\S+)", doc)
    assert since, f"hookspec {name} has no versionadded"
    assert f"versionadded: {since.group(1)}" in text


@pytest.mark.parametrize("name", sorted(specs()))
def test_firstresult_is_documented_where_it_applies(name: str) -> None:
    _, opts = specs()[name]
    assert ("firstresult" in sections()[name]) is bool(opts.get("firstresult"))


def call_order(text: str) -> list[list[str]]:
    """The numbered list's hook names, step by step."""
    hooks = set(specs())
    steps: list[list[str]] = []
    for item in re.split(r"^\s*\d+\.\s", text, flags=re.M)[1:]:
        steps.append([w for w in re.findall(r"`+([a-z_]+)[`(]", item) if w in hooks])
    return steps


def test_call_order_lists_every_hook_once() -> None:
    steps = call_order(other_section("Call order"))
    named = [h for step in steps for h in step]
    assert sorted(named) == sorted(specs())


def test_call_order_matches_the_hookspecs_module() -> None:
    assert call_order(other_section("Call order")) == call_order(hookspecs.__doc__ or "")


def call_signatures(text: str) -> dict[str, tuple[str, ...]]:
    return {
        name: tuple(a.strip() for a in args.split(",") if a.strip())
        for name, args in re.findall(r"`+([a-z_]+)\(([^)]*)\)`+", text)
        if name in specs()
    }


@pytest.mark.parametrize("source", [
    "docs/hooks.md",
    "microvm.hookspecs",
])
def test_call_order_uses_the_spec_argument_names(source: str) -> None:
    text = other_section("Call order") if source == "docs/hooks.md" else hookspecs.__doc__ or ""
    sigs = call_signatures(text)
    if source == "docs/hooks.md":
        assert set(sigs) == set(specs())
    assert "handle_exit" in sigs
    for name, args in sigs.items():
        assert args == specs()[name][0], f"{source}: {name}{args}"
