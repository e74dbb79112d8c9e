# The static (musl) bundle: bin/simplechat plus share/simplechat/templates,
# which the binary finds next to itself (../share/simplechat/templates), so it
# needs no configuration. Static assets are compiled into the binary.
# Call with pkgsStatic.callPackage so that rustPlatform targets musl; the
# mongodb driver keeps its default rustls/ring TLS (aws-lc-sys does not build
# statically against musl).
{
  lib,
  rustPlatform,
  src,
}:
let
  manifest = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "simplechat";
  inherit (manifest.package) version;
  inherit src;

  cargoLock.lockFile = ../Cargo.lock;

  # The workspace also holds the test-only simulator; ship just the app.
  cargoBuildFlags = [
    "-p"
    "simplechat"
  ];
  # The tests run against the simulator on loopback, which the build sandbox
  # has; tests that need Chromium or mongod skip by themselves.
  cargoTestFlags = [
    "-p"
    "simplechat"
  ];

  preCheck = ''
    export HOME="$(mktemp -d)"
  '';

  postInstall = ''
    mkdir -p "$out/share/simplechat"
    cp -r templates "$out/share/simplechat/templates"
  '';

  meta = {
    inherit (manifest.package) description;
    license = lib.licenses.mit;
    mainProgram = "simplechat";
    platforms = lib.platforms.linux;
  };
}
