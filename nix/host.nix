# One cluster member as a QEMU guest, for `nixos-rebuild switch --flake
# .#<name> --target-host ...` and `nixos-rebuild build-vm --flake .#<name>`.
# Everything about the replica set comes from the cluster description.
{ cluster, name }:
{ modulesPath, ... }:
let
  member = cluster.members.${name};
in
{
  imports = [ (modulesPath + "/profiles/qemu-guest.nix") ];

  services.simplechat = {
    enable = true;
    # The chat page is for the other machines on the network, as in the lab.
    settings.address = "0.0.0.0";
    openFirewall = true;
    replicaSet = {
      enable = true;
      inherit (cluster) name domain members;
      self = name;
    };
  };

  # A fixed interface name, so that the cluster file can say which NIC carries
  # the member address. Other NICs keep DHCP (NixOS turns it off only for
  # interfaces with static addresses).
  networking.usePredictableInterfaceNames = false;
  networking.interfaces.${cluster.interface}.ipv4.addresses = [
    {
      inherit (member) address;
      inherit (cluster) prefixLength;
    }
  ];

  # nixos-rebuild --target-host copies the system over SSH.
  services.openssh.enable = true;

  boot.loader.grub.device = "/dev/vda";
  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };

  system.stateVersion = "25.11";

  # `nixos-rebuild build-vm`: one member alone, for a local look at the
  # units and the page (without the other two it never gets a primary).
  virtualisation.vmVariant = {
    virtualisation.memorySize = 2048;
    virtualisation.cores = 2;
    # QEMU's user network answers DHCP on the first NIC; the member address
    # stays on it too, so mongod can bind it.
    networking.interfaces.${cluster.interface}.useDHCP = true;
    virtualisation.forwardPorts = [
      {
        from = "host";
        host.port = 8000;
        guest.port = 8000;
      }
    ];
  };
}
