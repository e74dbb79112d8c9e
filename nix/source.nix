# The Cargo workspace sources, and nothing else: editing docs, Nix files or CI
# must not rebuild the package or rerun its tests. `extra` adds files that
# only a check reads (the tests read the NixOS module's list of exit
# statuses), so that editing them reruns that check and rebuilds nothing.
{
  lib,
  extra ? [ ],
}:
let
  root = ../.;
in
lib.fileset.toSource {
  inherit root;
  fileset = lib.fileset.difference (lib.fileset.unions (
    [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      ../templates
      # Workspace members: cargo loads every member's manifest before it
      # builds anything, even with -p simplechat; the tests use the simulator,
      # and clippy and the tests cover the bench's sources too.
      ../replset-sim
      ../bench/Cargo.toml
      ../bench/src
    ]
    ++ map lib.fileset.maybeMissing [
      ../build.rs
      ../static
      ../assets
      ../tests
      ../benches
      ../examples
      ../.cargo
    ]
    ++ extra
  )) (lib.fileset.maybeMissing ../replset-sim/target);
}
