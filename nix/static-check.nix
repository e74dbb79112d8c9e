# `checks.x86_64-linux.static`: the bundle's binary is static (no ELF
# interpreter, no shared libraries) and runs with an empty environment.
# runCommandCC: the C toolchain's binutils provide readelf.
{ pkgs, package }:
pkgs.runCommandCC "simplechat-static-check" { } ''
  bin=${package}/bin/simplechat
  readelf="''${READELF:-readelf}"

  "$readelf" --program-headers --wide "$bin" >headers
  if grep -q INTERP headers; then
    echo "$bin asks for a dynamic loader:" >&2
    grep INTERP headers >&2
    exit 1
  fi
  "$readelf" --dynamic --wide "$bin" >dynamic
  if grep -q NEEDED dynamic; then
    echo "$bin needs shared libraries:" >&2
    grep NEEDED dynamic >&2
    exit 1
  fi

  # No variables at all, and a working directory without simplechat.toml.
  mkdir empty
  cd empty
  env -i "$bin" --version
  env -i "$bin" config

  touch "$out"
''
