# The whole cluster in one place: the replica-set name and each member's
# address. Host configurations, the modules and the VM test all read this file;
# each host only says which member it is.
{
  name = "rs";

  # Member names become host names; `<name>.<domain>` is what the replica-set
  # configuration and the app's connection string use.
  domain = "local";

  # The members' network: the interface their addresses sit on (first NIC,
  # with predictable interface names turned off) and its prefix length.
  interface = "eth0";
  prefixLength = 24;

  members = {
    storage1.address = "192.168.1.11";
    storage2.address = "192.168.1.12";
    storage3.address = "192.168.1.13";
  };
}
