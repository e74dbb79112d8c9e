# The failover VM test: three members built from the same modules and cluster
# description as the real hosts; the primary is crashed while a writer posts.
# `pkgs` must allow the unfree mongodb-ce: runNixOSTest hands it to the nodes
# read-only, so nodes cannot allow it themselves.
#
# With `auth = true` (checks.failover-auth) the same scenario runs with access
# control: the test writes the members' key file and the app's password into
# every member (never through the Nix store), the initiator creates the app's
# user, and a fourth node, not a member, must neither reach mongod (firewall)
# nor authenticate once the firewall lets it through.
{
  pkgs,
  cluster,
  module,
  auth ? false,
  # The bundle, for the non-member's MongoDB client (auth only).
  package ? null,
}:
let
  inherit (pkgs) lib;

  memberNames = lib.attrNames cluster.members;

  # Where the test writes the secrets on each member: a tmpfs, as
  # /run/keys is for deployment tools.
  keyFile = "/run/keys/mongodb-keyfile";
  passwordFile = "/run/keys/simplechat-mongodb-password";

  # The non-member node; the driver numbers nodes alphabetically, so it
  # comes after the members and gets the next address.
  visitor = "visitor";
  visitorAddress =
    assert lib.all (n: n < visitor) memberNames;
    "192.168.1.${toString (lib.length memberNames + 1)}";

  # The test driver numbers the nodes in alphabetical order and gives node n
  # the address 192.168.1.n; the cluster's real addresses do not exist here.
  testMembers = lib.listToAttrs (
    lib.imap1 (i: n: lib.nameValuePair n { address = "192.168.1.${toString i}"; }) memberNames
  );

  appPort = 8000;

  # Posts messages for a while and records each answer's status code and
  # text, so the test can check that every acknowledged message survived.
  chatWriter = pkgs.writeShellApplication {
    name = "chat-writer";
    runtimeInputs = [
      pkgs.curl
      pkgs.coreutils
    ];
    text = ''
      prefix="$1"
      seconds="$2"
      log="$3"
      end=$((SECONDS + seconds))
      i=0
      while [ "$SECONDS" -lt "$end" ]; do
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

  node = name: {
    imports = [ module ];

    services.simplechat = {
      enable = true;
      replicaSet = {
        enable = true;
        inherit (cluster) name domain;
        members = testMembers;
        self = name;
        auth = lib.mkIf auth {
          enable = true;
          inherit keyFile passwordFile;
        };
      };
    };

    # mongod and the app in each VM; the defaults (1 GiB) are too tight.
    virtualisation.memorySize = 2048;
    virtualisation.cores = 2;
    virtualisation.diskSize = 4096;

    environment.systemPackages = [
      pkgs.curl
      chatWriter
    ];

    # Only the names the cluster file gives, as on the real hosts. The test
    # network adds a line for every node to every /etc/hosts, the node's own
    # name with its 192.168.1.n and IPv6 addresses included; with an IPv6
    # answer among them the resolver sorts the addresses, puts the member's
    # own address ahead of 127.0.0.2, and the initiation with access control
    # would reach mongod from that address, not over loopback (no localhost
    # exception). Nothing here looks a node up by a name the cluster file
    # does not give (the non-member is reached by its address).
    networking.extraHosts = lib.mkForce "";

    # Refusing instead of dropping makes a connection the firewall does not
    # let through fail at once rather than after a connect timeout.
    networking.firewall.rejectPackets = true;
    # The script edits the iptables firewall's chain (nixos-fw), whatever
    # nixpkgs' default firewall becomes.
    networking.nftables.enable = false;
  };
  # A machine on the members' network that is no member: it has the
  # simplechat CLI (a MongoDB client) and nothing else of the cluster.
  visitorNode = {
    environment.systemPackages = [ package ];
  };
in
pkgs.testers.runNixOSTest {
  name = if auth then "simplechat-failover-auth" else "simplechat-failover";

  nodes = lib.genAttrs memberNames node // lib.optionalAttrs auth { ${visitor} = visitorNode; };

  testScript =
    { nodes, ... }:
    let
      first = nodes.${lib.head memberNames};
      uri = first.services.simplechat.replicaSet.connectionString;
      appUser = first.services.simplechat.replicaSet.auth.user;

      # Only the auth variant has the non-member node, so only it gets this
      # subtest, which names the node by the global the driver makes of its
      # name (nixos/lib/test-driver/src/test_driver/driver.py, test_symbols:
      # machine_symbols). The list of all machines, `machines`, is no global
      # in every driver: some 2026 versions of that file expose only
      # machines_qemu and machines_nspawn, and with them pyflakes (which
      # lints the script at build time) and the script itself fail on it.
      outsiderSubtest = lib.optionalString auth ''
        with subtest("a non-member can neither reach mongod nor authenticate"):
            addresses = [${lib.concatMapStringsSep ", " (n: builtins.toJSON testMembers.${n}.address) memberNames}]
            ${visitor}.wait_for_unit("multi-user.target", timeout=600)
            for address in addresses:
                ${visitor}.fail(f"nc -z -w 5 {address} 27017")
            for m in members:
                m.succeed(
                    "iptables -I nixos-fw -p tcp -s ${visitorAddress} --dport 27017 -j nixos-fw-accept"
                )
            for address in addresses:
                ${visitor}.succeed(f"nc -z -w 5 {address} 27017")
                direct = f"{address}:27017/?directConnection=true&serverSelectionTimeoutMS=5000"
                # No credentials: the handshake works, the data does not.
                _, out = ${visitor}.execute(
                    f"simplechat replset status --json --uri 'mongodb://{direct}' 2>&1"
                )
                assert "not authorized" in out, out
                # A guessed password: refused.
                _, out = ${visitor}.execute(
                    "simplechat replset status --json --uri "
                    f"'mongodb://${appUser}:guess@{direct}&authSource=admin&authMechanism=SCRAM-SHA-256' 2>&1"
                )
                assert "authentication failed" in out, out
            for m in members:
                m.succeed(
                    "iptables -D nixos-fw -p tcp -s ${visitorAddress} --dport 27017 -j nixos-fw-accept"
                )
      '';
    in
    ''
      import json
      import secrets
      import shlex
      import time
      import urllib.parse

      AUTH = ${if auth then "True" else "False"}
      APP = "http://127.0.0.1:${toString appPort}"
      members = [${lib.concatStringsSep ", " memberNames}]
      by_name = {m.name: m for m in members}

      # The secrets, made here and written into the members by this script:
      # a key of base64 characters and a password that needs escaping in a
      # connection string.
      KEY = secrets.token_hex(48)
      PASSWORD = "s3cret:p@ss/w%rd " + str(time.time_ns())
      BASE_URI = ${builtins.toJSON uri}
      if AUTH:
          # What the operator uses: the app's user, password escaped.
          URI = BASE_URI.replace(
              "mongodb://${appUser}@",
              "mongodb://${appUser}:" + urllib.parse.quote(PASSWORD, safe="") + "@",
          )
      else:
          URI = BASE_URI
      # The app's database: the connection string's path (the module sets one).
      DATABASE = urllib.parse.urlsplit(BASE_URI).path.strip("/") or "simplechat"
      # One member's own mongod, not the set: read as a secondary may be.
      OWN_URI = "mongodb://127.0.0.1:27017/?directConnection=true&readPreference=secondaryPreferred"
      if AUTH:
          OWN_URI = (
              "mongodb://${appUser}:" + urllib.parse.quote(PASSWORD, safe="")
              + "@127.0.0.1:27017/?directConnection=true&readPreference=secondaryPreferred"
              + "&authSource=admin&authMechanism=SCRAM-SHA-256"
          )


      def wait_for(predicate, what, timeout=180, interval=2):
          """Polls predicate until it returns something truthy, bounded by timeout."""
          deadline = time.monotonic() + timeout
          last = None
          while time.monotonic() < deadline:
              try:
                  last = predicate()
                  if last:
                      return last
              except Exception as e:  # an election makes single calls fail
                  last = e
              time.sleep(interval)
          raise Exception(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


      def status(node):
          # Exit status 2: not every member is healthy (or no primary); the
          # report is printed all the same, and the waits below read it.
          rc, out = node.execute(f"simplechat replset status --uri {shlex.quote(URI)} --json")
          assert rc in (0, 2), f"replset status exited {rc}: {out}"
          return json.loads(out)


      def states(node):
          return {m["name"]: m["state"] for m in status(node)["members"]}


      def post(node, text):
          body = json.dumps({"name": "tester", "text": text})
          out = node.succeed(
              "curl -sS --fail-with-body --max-time 60 -H 'Content-Type: application/json' "
              f"-d {shlex.quote(body)} {APP}/api/messages"
          )
          return json.loads(out)


      def texts(node):
          out = node.succeed(f"curl -sS --fail --max-time 30 '{APP}/api/messages?limit=1000'")
          return [m["text"] for m in json.loads(out)]


      def provision(node):
          # As soon as the node's shell answers, not once multi-user.target is
          # reached: the units that need the secrets fail without them and
          # are restarted (Restart=on-failure), and the target, ordered after
          # them, may wait for them as long as they keep trying.
          node.succeed(
              "install -d -m 0700 /run/keys",
              f"printf %s {shlex.quote(KEY)} > ${keyFile}",
              f"printf '%s\\n' {shlex.quote(PASSWORD)} > ${passwordFile}",
              "chmod 0400 ${keyFile} ${passwordFile}",
          )


      start_all()

      if AUTH:
          with subtest("the secrets are written into the members, and the units started with them"):
              for m in members:
                  provision(m)
              for m in members:
                  m.succeed(
                      "systemctl reset-failed",
                      "systemctl restart mongodb.service",
                  )
              storage1.succeed("systemctl restart simplechat-replset-init.service")

      for m in members:
          m.wait_for_unit("mongodb.service", timeout=300)
          m.wait_for_open_port(27017, timeout=300)

      with subtest("the replica set is initiated with exactly one primary"):
          storage1.wait_until_succeeds(
              "test \"$(systemctl show -P SubState simplechat-replset-init.service)\" = exited",
              timeout=600,
          )

          def one_primary():
              s = states(storage1)
              return s if sorted(s.values()) == ["PRIMARY", "SECONDARY", "SECONDARY"] else None

          print(wait_for(one_primary, "one PRIMARY and two SECONDARY members", timeout=300))

      if AUTH:
          with subtest("the app's user exists, with the roles replset status needs"):
              print(storage1.succeed("journalctl -u simplechat-replset-init.service --no-pager | tail -n 5"))
              # clusterMonitor: the figures come from replSetGetStatus itself.
              wait_for(lambda: status(storage1)["source"] == "replSetGetStatus", "replSetGetStatus as the app's user", timeout=120)
              for m in members:
                  m.succeed("systemctl reset-failed", "systemctl restart simplechat.service")

      for m in members:
          m.wait_for_unit("simplechat.service", timeout=120)
          m.wait_until_succeeds(f"curl -sf {APP}/readyz", timeout=180)

      ${outsiderSubtest}
      with subtest("a message posted on storage1 is listed on storage2"):
          msg = post(storage1, "hello from storage1")
          storage2.wait_until_succeeds(f"curl -sf {APP}/api/messages/{msg['id']}", timeout=60)
          # The listing comes from storage2's live feed, a moment behind the store.
          wait_for(lambda: "hello from storage1" in texts(storage2), "storage2 to list it", timeout=60, interval=1)

      with subtest("an SSE client on storage3 receives a message posted on storage2"):
          storage3.succeed(
              "systemd-run --unit=sse-client --property=Type=exec "
              f"/run/current-system/sw/bin/curl -sSN --max-time 900 -o /tmp/sse.log {APP}/api/events"
          )
          storage3.wait_for_unit("sse-client.service", timeout=30)

          # A message posted before the stream is subscribed is not pushed, so
          # post fresh probes until one arrives.
          def sse_delivered():
              probe = f"sse-probe-{time.time_ns()}"
              post(storage2, probe)
              rc, _ = storage3.execute(
                  f"timeout 10 sh -c 'until grep -q {probe} /tmp/sse.log; do sleep 0.5; done'"
              )
              return rc == 0

          wait_for(sse_delivered, "a message event on storage3", timeout=120, interval=1)
          storage3.succeed("grep -q '^event: message' /tmp/sse.log")

      with subtest("crashing the primary during writes loses nothing acknowledged"):
          old_primary = status(storage1)["primary"]
          assert old_primary, "no primary before the crash"
          victim = by_name[old_primary.split(".")[0]]
          writer, reader = [m for m in members if m is not victim]

          writer.succeed(
              "systemd-run --unit=chat-writer --property=Type=exec "
              "/run/current-system/sw/bin/chat-writer failover 60 /tmp/writer.log"
          )
          writer.wait_until_succeeds("test \"$(grep -c '^2' /tmp/writer.log)\" -ge 5", timeout=60)

          victim.crash()

          def new_primary():
              p = status(writer)["primary"]
              return p if p and p != old_primary else None

          print("new primary:", wait_for(new_primary, "a new primary", timeout=120))

          post(writer, "after failover via " + writer.name)
          post(reader, "after failover via " + reader.name)

          writer.wait_until_succeeds("test -e /tmp/writer.log.done", timeout=300)
          results = [line.split(" ", 1) for line in writer.succeed("cat /tmp/writer.log").splitlines()]
          acked = [text for code, text in results if code.startswith("2")]
          print(f"writer: {len(acked)} of {len(results)} posts acknowledged")
          assert len(acked) >= 5, "the writer got too few acknowledgements"

          def missing_on_reader():
              listed = set(texts(reader))
              return [t for t in acked if t not in listed]

          wait_for(lambda: not missing_on_reader(), "every acknowledged message listed", timeout=60, interval=1)

      with subtest("the crashed member rejoins as SECONDARY and lists the full history"):
          victim.start()
          if AUTH:
              # /run/keys is a tmpfs: the secrets went with the crash, as they
              # go with any reboot, and are written again (as after boot).
              provision(victim)
              victim.succeed(
                  "systemctl reset-failed",
                  "systemctl restart mongodb.service simplechat.service",
              )
          victim.wait_for_unit("mongodb.service", timeout=300)
          victim.wait_for_open_port(27017, timeout=300)

          def rejoined():
              s = states(writer)
              return s if s.get(old_primary) == "SECONDARY" else None

          print(wait_for(rejoined, f"{old_primary} to rejoin as SECONDARY", timeout=300))

          victim.wait_for_unit("simplechat.service", timeout=120)
          victim.wait_until_succeeds(f"curl -sf {APP}/readyz", timeout=180)
          expected = set(acked) | {
              "hello from storage1",
              "after failover via " + writer.name,
              "after failover via " + reader.name,
          }
          wait_for(lambda: expected <= set(texts(victim)), "the full history on the old primary", timeout=120)

          # The app reads through the primary, so the listing above says
          # nothing of the old primary's own copy: read its mongod directly,
          # as the secondary it now is. mongosh prints the --eval result as
          # JSON with --json (mongodb.com/docs/mongodb-shell/reference/options/).
          def own_texts():
              out = victim.succeed(
                  f"mongosh --quiet --norc --json=relaxed {shlex.quote(OWN_URI)} --eval "
                  + shlex.quote(
                      f"db.getSiblingDB({json.dumps(DATABASE)}).messages"
                      ".find({}, {_id: 0, text: 1}).toArray().map(d => d.text)"
                  )
              )
              listed, _ = json.JSONDecoder().raw_decode(out[out.index("["):])
              return set(listed)

          wait_for(lambda: expected <= own_texts(), "the full history in the old primary's own copy", timeout=120)

      if AUTH:
          with subtest("no password in any journal"):
              for m in members:
                  for secret in [PASSWORD, urllib.parse.quote(PASSWORD, safe="")]:
                      m.fail(f"journalctl -b --no-pager | grep -F -- {shlex.quote(secret)}")
    '';
}
