{
  description = "simplechat: a chat service on a three-member MongoDB replica set";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs =
    { self, nixpkgs }:
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

      pkgsWithMongodb =
        system:
        import nixpkgs {
          inherit system;
          config.allowUnfreePredicate = allowMongodb;
        };

      src = import ./nix/source.nix { inherit lib; };
    in
    {
      packages = forAllSystems (system: {
        default = nixpkgs.legacyPackages.${system}.pkgsStatic.callPackage ./nix/package.nix {
          inherit src;
        };
      });

      nixosModules = {
        simplechat = ./nixos-modules/simplechat.nix;
        replicaSet = ./nixos-modules/replica-set.nix;
        # Both modules, with this flake's bundle as the package.
        default =
          { lib, pkgs, ... }:
          {
            imports = [ ./nixos-modules ];
            services.simplechat.package =
              lib.mkDefault
                self.packages.${pkgs.stdenv.hostPlatform.system}.default;
          };
      };

      nixosConfigurations = lib.genAttrs (lib.attrNames cluster.members) (
        name:
        lib.nixosSystem {
          modules = [
            self.nixosModules.default
            (import ./nix/host.nix { inherit cluster name; })
            {
              nixpkgs.hostPlatform = "x86_64-linux";
              nixpkgs.config.allowUnfreePredicate = allowMongodb;
            }
          ];
        }
      );

      checks.x86_64-linux =
        let
          pkgs = pkgsWithMongodb "x86_64-linux";
        in
        {
          package = self.packages.x86_64-linux.default;
          failover = import ./nix/failover-test.nix {
            inherit pkgs cluster;
            module = self.nixosModules.default;
          };
        }
        // import ./nix/checks.nix {
          inherit src;
          pkgs = nixpkgs.legacyPackages.x86_64-linux;
        };

      devShells = forAllSystems (
        system:
        let
          pkgs = pkgsWithMongodb system;
        in
        {
          default = pkgs.mkShell {
            packages = [
              pkgs.cargo
              pkgs.rustc
              pkgs.clippy
              pkgs.rustfmt
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
