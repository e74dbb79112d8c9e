# The whole cluster in one place: the replica-set name, the members, and how
# each member's machine is made. The host configurations, the modules and the
# VM test all read this file; each host only says which member it is.
{
  name = "rs";

  # Member names become host names; `<name>.<domain>` is what the replica-set
  # configuration and the app's connection string use (the lab's names). With
  # the domain `local`, mDNS must not answer for these names first: the
  # modules refuse services.avahi.nssmdns4 on the members.
  domain = "local";

  # Public keys allowed to log in as root over SSH (what
  # `nixos-rebuild --target-host root@...` connects with). EC2 instances also
  # keep the key pair chosen at launch.
  sshKeys = [
    # "ssh-ed25519 AAAA... you@laptop"
  ];

  # Per member:
  #   address   the address the other members and the apps reach it at.
  #   hardware  "amazon": an EC2 instance booted from the official NixOS AMI
  #             (nixpkgs' virtualisation/amazon-image.nix);
  #             "qemu": a QEMU/KVM guest installed the NixOS manual's legacy
  #             BIOS way (virtio disk /dev/vda, MBR, root labelled `nixos`);
  #             or a path: that machine's own hardware-configuration.nix (from
  #             nixos-generate-config), e.g. ../hosts/storage1/hardware-configuration.nix,
  #             together with `bootLoader` ("systemd-boot" for UEFI, or
  #             { grubDevice = "/dev/sda"; } for BIOS).
  #   network   "dhcp" (the default): the address comes from the network, as
  #             EC2 gives each instance its private address; the cluster file
  #             must name the address the network hands out.
  #             Or static: { interface = "ens18"; prefixLength = 24;
  #             gateway = "192.168.1.1"; nameservers = [ "192.168.1.1" ]; }.
  #             Interfaces keep their kernel names (see `ip link`).
  #   system    "x86_64-linux" (the default) or "aarch64-linux".
  #
  # The lab's setting: three EC2 instances in one subnet, addresses from DHCP.
  members = {
    storage1 = {
      address = "192.168.1.11";
      hardware = "amazon";
    };
    storage2 = {
      address = "192.168.1.12";
      hardware = "amazon";
    };
    storage3 = {
      address = "192.168.1.13";
      hardware = "amazon";
    };
  };
}
