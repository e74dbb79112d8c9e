# Both simplechat modules: the app service and the replica-set member.
{
  imports = [
    ./simplechat.nix
    ./replica-set.nix
  ];
}
