# Lint checks over the same sources as the package. They use the native (glibc)
# toolchain: lints do not depend on the target, and it is cached.
{ pkgs, src }:
{
  clippy = pkgs.rustPlatform.buildRustPackage {
    pname = "simplechat-clippy";
    version = (pkgs.lib.importTOML ../Cargo.toml).package.version;
    inherit src;
    cargoLock.lockFile = ../Cargo.lock;
    nativeBuildInputs = [ pkgs.clippy ];

    buildPhase = ''
      runHook preBuild
      cargo clippy --offline --workspace --all-targets -- -D warnings
      runHook postBuild
    '';
    doCheck = false;
    installPhase = ''
      touch "$out"
    '';
  };

  fmt =
    pkgs.runCommand "simplechat-fmt"
      {
        nativeBuildInputs = [
          pkgs.cargo
          pkgs.rustfmt
        ];
      }
      ''
        # cargo wants a writable home; the store copy of the sources is read-only.
        export HOME="$TMPDIR" CARGO_HOME="$TMPDIR/cargo"
        cp -r ${src} source
        chmod -R u+w source
        cd source
        cargo fmt --all --check
        touch "$out"
      '';
}
