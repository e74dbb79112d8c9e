{
  description = "simplechat: a chat service on a three-member MongoDB replica set";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    crane.url = "github:ipetkov/crane";
    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      crane,
      rust-overlay,
    }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = lib.genAttrs systems;

      cluster = import ./nix/cluster.nix;

      # mongod is under the SSPL, which nixpkgs counts as unfree; allow exactly
      # that package and nothing else.
      allowMongodb = pkg: lib.getName pkg == "mongodb-ce";

      pkgsFor =
        system:
        import nixpkgs {
          inherit system;
          overlays = [ rust-overlay.overlays.default ];
          config.allowUnfreePredicate = allowMongodb;
        };

      src = import ./nix/source.nix { inherit lib; };
      # The tests also read the app module's restart rules
      # (`cli_config::the_unit_restarts_on_every_status_but_those_no_restart_mends`).
      testSrc = import ./nix/source.nix {
        inherit lib;
        extra = [ ./nixos-modules/simplechat.nix ];
      };

      rust = forAllSystems (
        system:
        import ./nix/rust.nix {
          pkgs = pkgsFor system;
          inherit crane src testSrc;
        }
      );
    in
    {
      packages = forAllSystems (system: {
        default = rust.${system}.package;
      });

      # `pkgs.simplechat`: this flake's bundle, for the bare modules.
      overlays.default =
        final: _prev:
        let
          system = final.stdenv.hostPlatform.system;
        in
        {
          simplechat =
            self.packages.${system}.default
              or (throw "simplechat: the flake builds for ${lib.concatStringsSep " and " systems}, not ${system}");
        };

      nixosModules = {
        # The bare modules: services.simplechat.package defaults to
        # pkgs.simplechat (use overlays.default, or set the package).
        simplechat = ./nixos-modules/simplechat.nix;
        replicaSet = ./nixos-modules/replica-set.nix;
        # Both modules, with this flake's bundle as the package.
        default =
          { lib, pkgs, ... }:
          {
            imports = [ ./nixos-modules ];
            services.simplechat.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
          };
      };

      # One configuration per cluster member; nix/cluster.nix says how each
      # machine is made (hardware profile or file, network, SSH keys).
      nixosConfigurations = lib.genAttrs (lib.attrNames cluster.members) (
        name:
        lib.nixosSystem {
          modules = [
            self.nixosModules.default
            (import ./nix/host.nix { inherit cluster name; })
            {
              nixpkgs.hostPlatform = cluster.members.${name}.system or "x86_64-linux";
              nixpkgs.config.allowUnfreePredicate = allowMongodb;
            }
          ];
        }
      );

      checks = forAllSystems (
        system:
        {
          package = self.packages.${system}.default;
          inherit (rust.${system}.checks) clippy tests fmt;
        }
        // lib.optionalAttrs (system == "x86_64-linux") {
          static = import ./nix/static-check.nix {
            pkgs = pkgsFor system;
            package = self.packages.${system}.default;
          };
          failover = import ./nix/failover-test.nix {
            pkgs = pkgsFor system;
            inherit cluster;
            module = self.nixosModules.default;
          };
          # The same scenario with the key file and the app's user, plus a
          # non-member that can neither reach nor authenticate to mongod.
          failover-auth = import ./nix/failover-test.nix {
            pkgs = pkgsFor system;
            inherit cluster;
            module = self.nixosModules.default;
            auth = true;
            package = self.packages.${system}.default;
          };
          membership = import ./nix/membership-test.nix {
            pkgs = pkgsFor system;
            inherit cluster;
            module = self.nixosModules.default;
          };
        }
      );

      devShells = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
        in
        {
          default = pkgs.mkShell {
            packages = [
              # The same toolchain as the Nix builds (cargo, rustc, clippy,
              # rustfmt, and the musl standard library).
              rust.${system}.toolchain
              pkgs.rust-analyzer
              pkgs.mongodb-ce
              pkgs.mongosh
              pkgs.nixfmt
            ];
          };
        }
      );

      formatter = forAllSystems (system: nixpkgs.legacyPackages.${system}.nixfmt);
    };
}
