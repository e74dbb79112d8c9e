# The Rust side of the flake: one prebuilt toolchain (rust-overlay) that
# carries the musl standard library, crane on top of it, the dependencies
# built once for the bundle (release) and once for the checks (clippy and
# the tests, in cargo's own profiles), and rustfmt.
#
# `pkgs` must have rust-overlay's overlay applied (`pkgs.rust-bin`).
{
  pkgs,
  crane,
  src,
  # `src` and the files only the tests read.
  testSrc,
}:
let
  inherit (pkgs) lib;

  manifest = lib.importTOML ../Cargo.toml;

  # The released toolchain every Nix build and check uses, downloaded
  # prebuilt from static.rust-lang.org (no compiler is built from source).
  # Not older than `rust-version` in Cargo.toml.
  rustVersion = "1.97.1";

  # Static binaries: the same CPU, musl instead of glibc.
  target = "${pkgs.stdenv.hostPlatform.parsed.cpu.name}-unknown-linux-musl";
  targetVar = builtins.replaceStrings [ "-" ] [ "_" ] target;

  toolchainFor =
    p:
    p.rust-bin.stable.${rustVersion}.minimal.override {
      extensions = [
        "clippy"
        "rustfmt"
      ];
      targets = [ target ];
    };

  toolchain = toolchainFor pkgs;

  craneLib = (crane.mkLib pkgs).overrideToolchain toolchainFor;

  commonArgs = {
    inherit src;
    pname = manifest.package.name;
    inherit (manifest.package) version;
    strictDeps = true;

    CARGO_BUILD_TARGET = target;
    CARGO_BUILD_RUSTFLAGS = "-C target-feature=+crt-static";

    env = {
      # ring (rustls) and mimalloc compile C with the cc crate. The host's C
      # compiler is used for the musl target too (it is in the binary cache;
      # a musl cross compiler would be built from source), and it links:
      # rustc links musl's own crt and libc.a (self-contained).
      "CC_${targetVar}" = "cc";
      "CARGO_TARGET_${lib.toUpper targetVar}_LINKER" = "cc";
      # mimalloc's C sets no dialect. GCC 15 defaults to C23, in which glibc's
      # headers (2.38 on) turn strtol into __isoc23_strtol, a symbol musl's
      # libc.a does not have. (ring passes a -std of its own as well.)
      "CFLAGS_${targetVar}" = "-std=gnu17";
    };

    # The host compiler's glibc headers would turn fortified calls into
    # __memcpy_chk and friends, which musl's libc.a does not have.
    hardeningDisable = [ "fortify" ];
  };

  # Every dependency of the app compiled once for the musl target, in the
  # release profile: the bundle starts from these artifacts. No tests here
  # (they have `checkArtifacts`), so no dev-dependency and no test binary
  # is built, nor linked with fat LTO.
  cargoArtifacts = craneLib.buildDepsOnly (commonArgs // { doCheck = false; });

  # The checks (clippy, tests) build with cargo's own profiles, as CI's
  # `cargo clippy --all-targets` and `cargo test` (the README's test
  # command) do, not with crane's default `--release`: the release
  # profile's fat LTO over one codegen unit would link each test binary
  # whole-program on one core. An empty CARGO_PROFILE leaves the profile
  # flag out (crane's `cargoWithProfile`, docs/API.md). Both checks start
  # from one build of every dependency and dev-dependency (`checkArtifacts`).
  # Line tables only: a failing test's backtrace still names its lines, and
  # the artifacts stay a fraction of full debug info.
  checkArgs = commonArgs // {
    CARGO_PROFILE = "";
    env = commonArgs.env // {
      CARGO_PROFILE_DEV_DEBUG = "line-tables-only";
      CARGO_PROFILE_TEST_DEBUG = "line-tables-only";
    };
  };
  # Every workspace member's dependencies, as the checks build them with
  # `--workspace`: crane's `buildDepsOnly` passes only `cargoExtraArgs`
  # (default `--locked`), and without `--workspace` cargo would build the
  # root package's alone, leaving the simulator's and the bench's (and any
  # feature that unification across members turns on) to both checks.
  checkArtifacts = craneLib.buildDepsOnly (
    checkArgs
    // {
      cargoExtraArgs = "--locked --workspace";
    }
  );

  package = craneLib.buildPackage (
    commonArgs
    // {
      inherit cargoArtifacts;
      # Only the app; the simulator is a test-only workspace member.
      cargoExtraArgs = "--locked --package simplechat";
      # The tests are their own check (`checks.<system>.tests`).
      doCheck = false;

      # The binary finds its templates at ../share/simplechat/templates;
      # scripts and stylesheets are compiled in.
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
  );
in
{
  inherit
    toolchain
    craneLib
    cargoArtifacts
    package
    target
    ;

  checks = {
    clippy = craneLib.cargoClippy (
      checkArgs
      // {
        cargoArtifacts = checkArtifacts;
        cargoClippyExtraArgs = "--workspace --all-targets -- --deny warnings";
      }
    );

    # The workspace tests, as CI runs them. Tests that need Chromium or mongod
    # skip themselves; those against the replica-set simulator use loopback,
    # which the build sandbox has.
    tests = craneLib.cargoTest (
      checkArgs
      // {
        src = testSrc;
        cargoArtifacts = checkArtifacts;
        cargoTestExtraArgs = "--workspace";
        # Nothing builds on this check's target directory.
        doInstallCargoArtifacts = false;
        preCheck = ''
          export HOME="$(mktemp -d)"
        '';
      }
    );

    fmt = craneLib.cargoFmt {
      inherit src;
      inherit (commonArgs) pname version;
      cargoExtraArgs = "--all";
    };
  };
}
