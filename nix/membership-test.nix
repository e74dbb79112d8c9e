# The membership VM test: a dead member is replaced through a configuration
# switch on the live machines, as an operator's rebuilds would do it. Three
# members (storage1..3) run the cluster file; storage4 is deployed with the
# changed file (storage3 replaced by storage4); storage3 crashes; storage2 and
# then storage1 (the initiator, whose unit runs `replset apply`) switch to the
# changed file through a specialisation. A writer posts throughout; nothing
# acknowledged may be lost. `pkgs` must allow the unfree mongodb-ce (see
# failover-test.nix).
{
  pkgs,
  cluster,
  module,
}:
let
  inherit (pkgs) lib;

  # The test driver numbers the nodes in alphabetical order and gives node n
  # the address 192.168.1.n.
  address = n: "192.168.1.${toString n}";
  before = {
    storage1.address = address 1;
    storage2.address = address 2;
    storage3.address = address 3;
  };
  after = {
    storage1.address = address 1;
    storage2.address = address 2;
    storage4.address = address 4;
  };
  endpoints =
    members:
    lib.concatMapStringsSep "," (n: "${n}.${cluster.domain}:27017") (lib.attrNames members);
  uriOf = members: "mongodb://${endpoints members}/simplechat?replicaSet=${cluster.name}";

  appPort = 8000;

  chatWriter = pkgs.writeShellApplication {
    name = "chat-writer";
    runtimeInputs = [
      pkgs.curl
      pkgs.coreutils
    ];
    text = ''
      prefix="$1"
      log="$2"
      i=0
      while [ ! -e "$log.stop" ]; do
        i=$((i + 1))
        text="$prefix-$i"
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 60 \
          -H 'Content-Type: application/json' \
          -d "{\"name\":\"writer\",\"text\":\"$text\"}" \
          http://127.0.0.1:${toString appPort}/api/messages) || true
        echo "$code $text" >>"$log"
        sleep 0.2
      done
      touch "$log.done"
    '';
  };

  node = members: name: {
    imports = [ module ];

    services.simplechat = {
      enable = true;
      replicaSet = {
        enable = true;
        inherit (cluster) name domain;
        inherit members;
        self = name;
      };
    };

    virtualisation.memorySize = 2048;
    virtualisation.cores = 2;
    virtualisation.diskSize = 4096;

    environment.systemPackages = [
      pkgs.curl
      chatWriter
    ];
    networking.firewall.rejectPackets = true;
    # The script reads the iptables firewall's chain (nixos-fw), whatever
    # nixpkgs' default firewall becomes.
    networking.nftables.enable = false;
  };

  # A member of the first cluster file, with the changed file as a
  # specialisation to switch to. mkForce: the members are an attribute set,
  # and definitions of one would otherwise be merged, not replaced.
  switching = name: {
    imports = [ (node before name) ];
    specialisation.replaced.configuration = {
      services.simplechat.replicaSet.members = lib.mkForce after;
    };
  };
in
pkgs.testers.runNixOSTest {
  name = "simplechat-membership";

  nodes = {
    storage1 = switching "storage1";
    storage2 = switching "storage2";
    storage3 = node before "storage3";
    # Deployed first with the changed cluster file, as the docs say.
    storage4 = node after "storage4";
  };

  testScript = ''
    import json
    import shlex
    import time

    BEFORE = ${builtins.toJSON (uriOf before)}
    AFTER = ${builtins.toJSON (uriOf after)}
    APP = "http://127.0.0.1:${toString appPort}"
    SWITCH = "/run/current-system/specialisation/replaced/bin/switch-to-configuration test"


    def wait_for(predicate, what, timeout=300, interval=2):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
                if last:
                    return last
            except Exception as e:  # elections and restarts make single calls fail
                last = e
            time.sleep(interval)
        raise Exception(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


    def status(node, uri):
        # Exit status 2: not every member is healthy (or no primary); the
        # report is printed all the same, and the waits below read it.
        rc, out = node.execute(f"simplechat replset status --uri {shlex.quote(uri)} --json")
        assert rc in (0, 2), f"replset status exited {rc}: {out}"
        return json.loads(out)


    def texts(node):
        out = node.succeed(f"curl -sS --fail --max-time 30 '{APP}/api/messages?limit=1000'")
        return [m["text"] for m in json.loads(out)]


    def mongod_sources(node):
        # The addresses the firewall lets reach mongod (`iptables -S` prints
        # each rule as `-A nixos-fw -s ADDRESS/32 -p tcp -m tcp --dport 27017 ...`).
        rules = node.succeed("iptables -S nixos-fw").splitlines()
        return sorted(
            r.split(" -s ", 1)[1].split("/", 1)[0]
            for r in rules
            if " -s " in r and "--dport 27017 " in r
        )


    start_all()

    for m in [storage1, storage2, storage3, storage4]:
        m.wait_for_unit("mongodb.service", timeout=300)
        m.wait_for_open_port(27017, timeout=300)

    with subtest("the first cluster file makes a set of storage1..3"):
        def three():
            s = status(storage1, BEFORE)
            states = sorted(m["state"] for m in s["members"])
            return s if states == ["PRIMARY", "SECONDARY", "SECONDARY"] else None

        print(wait_for(three, "one PRIMARY and two SECONDARY members", timeout=600))
        storage2.wait_for_unit("simplechat.service", timeout=120)
        storage2.wait_until_succeeds(f"curl -sf {APP}/readyz", timeout=180)

    with subtest("a writer posts on storage2 while storage3 dies"):
        storage2.succeed(
            "systemd-run --unit=chat-writer --property=Type=exec "
            "/run/current-system/sw/bin/chat-writer replace /tmp/writer.log"
        )
        storage2.wait_until_succeeds("test \"$(grep -c '^2' /tmp/writer.log)\" -ge 5", timeout=120)
        storage3.crash()

        def storage3_down():
            s = status(storage1, BEFORE)
            down = [m for m in s["members"] if m["name"].startswith("storage3") and m["health"] == 0]
            return s if down and s["primary"] else None

        print(wait_for(storage3_down, "storage3 reported down with a primary left", timeout=120))

    with subtest("storage2, then storage1 switch to the changed cluster file"):
        # The test network lists every node, storage3 and storage4 included,
        # in every /etc/hosts whatever the cluster file says; the mongod
        # firewall rules are what follow the member list.
        for m in [storage2, storage1]:
            m.succeed(SWITCH)
            allowed = mongod_sources(m)
            assert "${address 4}" in allowed and "${address 3}" not in allowed, allowed

        def replaced():
            s = status(storage1, AFTER)
            names = sorted(m["name"] for m in s["members"])
            states = sorted(m["state"] for m in s["members"])
            wanted = ["storage1.local:27017", "storage2.local:27017", "storage4.local:27017"]
            return s if names == wanted and states == ["PRIMARY", "SECONDARY", "SECONDARY"] else None

        print(wait_for(replaced, "storage4 in the set and storage3 out of it", timeout=900, interval=5))
        print(storage1.succeed("journalctl -u simplechat-replset-init.service --no-pager | tail -n 30"))

    with subtest("apply again changes nothing"):
        plan = storage1.succeed(
            "simplechat replset plan --name ${cluster.name} "
            "--member storage1.local:27017 --member storage2.local:27017 --member storage4.local:27017"
        )
        assert "nothing to do" in plan, plan

    with subtest("nothing acknowledged was lost, and storage4 serves the full history"):
        storage2.succeed("touch /tmp/writer.log.stop")
        storage2.wait_until_succeeds("test -e /tmp/writer.log.done", timeout=120)
        results = [line.split(" ", 1) for line in storage2.succeed("cat /tmp/writer.log").splitlines()]
        acked = [text for code, text in results if code.startswith("2")]
        print(f"writer: {len(acked)} of {len(results)} posts acknowledged")
        assert len(acked) >= 5, "the writer got too few acknowledgements"

        storage4.wait_for_unit("simplechat.service", timeout=120)
        storage4.wait_until_succeeds(f"curl -sf {APP}/readyz", timeout=300)

        def missing():
            listed = set(texts(storage4))
            return [t for t in acked if t not in listed]

        wait_for(lambda: not missing(), "every acknowledged message listed on storage4", timeout=120)
  '';
}
