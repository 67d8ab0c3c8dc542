#!/usr/bin/env python3
"""Fails when a workspace crate declares a dependency its code never names.

For each member of the workspace (the root Cargo.toml's `members`), every entry of
`[dependencies]`, `[dev-dependencies]` and `[build-dependencies]` must appear in the crate's
Rust files (src/, tests/, benches/, examples/, build.rs) as a path (`name::`), in a `use` or
an `extern crate` (the crate name with `-` read as `_`). What cargo-machete checks, without
compiling anything. A dependency needed only for its features (never named in code) is
listed in the crate's `[package.metadata.cargo-machete] ignored = [...]`, as for
cargo-machete itself.

Usage: scripts/lib/unused-deps.py [WORKSPACE_ROOT]     exit 1 when something is unused
"""
import pathlib
import re
import sys
import tomllib

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parents[2])
workspace = tomllib.loads((root / "Cargo.toml").read_text())
unused = []
for member in workspace["workspace"]["members"]:
    crate = root / member
    manifest = tomllib.loads((crate / "Cargo.toml").read_text())
    ignored = set(manifest.get("package", {}).get("metadata", {}).get("cargo-machete", {}).get("ignored", []))
    files = [p for d in ("src", "tests", "benches", "examples") for p in (crate / d).rglob("*.rs")]
    if (crate / "build.rs").exists():
        files.append(crate / "build.rs")
    code = "\n".join(p.read_text() for p in files)
    for section in ("dependencies", "dev-dependencies", "build-dependencies"):
        for name in manifest.get(section, {}):
            ident = name.replace("-", "_")
            pattern = rf"\b{ident}::|\buse {ident}\b|\bextern crate {ident}\b"
            if name not in ignored and not re.search(pattern, code):
                unused.append(f"{member}: [{section}] {name}")
for line in unused:
    print(f"unused dependency: {line}")
print(f"unused-deps: {len(workspace['workspace']['members'])} crates checked, {len(unused)} unused dependencies")
sys.exit(1 if unused else 0)
