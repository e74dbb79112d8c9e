# The Cargo workspace sources, and nothing else: editing docs, Nix files or CI
# must not rebuild the package or rerun its tests.
{ lib }:
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
      # A workspace member: cargo reads its manifest even when building only
      # -p simplechat, and the tests use it.
      ../replset-sim
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
  )) (lib.fileset.maybeMissing ../replset-sim/target);
}
