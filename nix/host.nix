# One cluster member, for `nixos-rebuild switch --flake .#<name> --target-host ...`.
# How the machine is made (hardware, boot loader, network) and everything about
# the replica set come from the cluster description (nix/cluster.nix).
{ cluster, name }:
{
  lib,
  modulesPath,
  ...
}:
let
  member = cluster.members.${name};
  hardware = member.hardware or "qemu";
  network = member.network or "dhcp";
  isStatic = network != "dhcp";
  system = member.system or "x86_64-linux";
  sshKeys = cluster.sshKeys or [ ];

  profiles = {
    # An EC2 instance from the official NixOS AMI: root file system, boot
    # loader, ENA/NVMe drivers, the launch key pair for root and the address
    # from DHCP all come from nixpkgs' own EC2 module.
    amazon = {
      imports = [ (modulesPath + "/virtualisation/amazon-image.nix") ];
      # aarch64 instances boot UEFI only; x86_64 AMIs say which in their
      # /etc/nixos/configuration.nix (`ec2.efi`).
      ec2.efi = member.efi or (system == "aarch64-linux");
    };

    # A QEMU/KVM guest installed the way the NixOS manual's legacy BIOS
    # instructions do it: virtio disk /dev/vda, MBR, ext4 root labelled nixos.
    qemu = {
      imports = [ (modulesPath + "/profiles/qemu-guest.nix") ];
      boot.loader.grub.device = "/dev/vda";
      fileSystems."/" = {
        device = "/dev/disk/by-label/nixos";
        fsType = "ext4";
      };
    };
  };

  # The machine's own hardware-configuration.nix; it has no boot loader.
  bootLoader = member.bootLoader or null;
  ownHardware = {
    imports = [ hardware ];
    assertions = [
      {
        assertion = bootLoader != null;
        message = "nix/cluster.nix: member ${name} uses its own hardware-configuration.nix; also give bootLoader = \"systemd-boot\" (UEFI) or { grubDevice = \"/dev/...\"; } (BIOS).";
      }
    ];
    boot.loader = lib.mkIf (bootLoader != null) (
      if bootLoader == "systemd-boot" then
        {
          systemd-boot.enable = true;
          efi.canTouchEfiVariables = true;
        }
      else
        { grub.device = bootLoader.grubDevice; }
    );
  };

  machine =
    if builtins.isString hardware then
      profiles.${hardware}
        or (throw "nix/cluster.nix: member ${name}: hardware = \"${hardware}\" is not a profile (amazon, qemu) or a path to a hardware-configuration.nix")
    else
      ownHardware;
in
{
  imports = [ machine ];

  assertions = [
    {
      # Without a key nobody could log in after the first switch (EC2
      # instances keep their launch key pair).
      assertion = sshKeys != [ ] || hardware == "amazon";
      message = "nix/cluster.nix: sshKeys is empty; add the public key that nixos-rebuild --target-host logs in with.";
    }
  ];

  services.simplechat = {
    enable = true;
    # The chat page is for the other machines on the network, as in the lab.
    settings.address = "0.0.0.0";
    openFirewall = true;
    replicaSet = {
      enable = true;
      inherit (cluster) name domain;
      members = lib.mapAttrs (_: m: { inherit (m) address; }) cluster.members;
      self = name;
    };
  };

  # The EC2 module defaults the host name to "" (taken from EC2 at boot); a
  # member is called by its member name.
  networking.hostName = name;

  # The member address: from DHCP (nothing to declare), or static on a named
  # interface with its gateway and nameservers; dhcpcd leaves an interface
  # with static addresses alone, so the route and DNS must be declared.
  networking.interfaces = lib.mkIf isStatic {
    ${network.interface}.ipv4.addresses = [
      {
        inherit (member) address;
        prefixLength = network.prefixLength or 24;
      }
    ];
  };
  networking.defaultGateway = lib.mkIf (isStatic && network ? gateway) {
    address = network.gateway;
    inherit (network) interface;
  };
  networking.nameservers = lib.mkIf isStatic (network.nameservers or [ ]);

  # nixos-rebuild --target-host copies the system over SSH, as root.
  services.openssh = {
    enable = true;
    settings = {
      PermitRootLogin = "prohibit-password";
      PasswordAuthentication = false;
      KbdInteractiveAuthentication = false;
    };
  };
  users.users.root.openssh.authorizedKeys.keys = sshKeys;

  system.stateVersion = "26.05";
}
