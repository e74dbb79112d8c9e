# One member of simplechat's MongoDB replica set. A single cluster description
# (name, members and their addresses) drives /etc/hosts, mongod, the firewall,
# the app's connection string and the one-shot initiation on one member.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    attrNames
    concatMapStrings
    concatMapStringsSep
    concatStringsSep
    filter
    hasInfix
    head
    length
    mapAttrs'
    mkDefault
    mkIf
    mkMerge
    mkOption
    nameValuePair
    optional
    types
    ;

  app = config.services.simplechat;
  cfg = app.replicaSet;
  firewallBackend =
    config.networking.firewall.backend
      or (if config.networking.nftables.enable then "nftables" else "iptables");

  memberNames = attrNames cfg.members;
  hostOf = name: "${name}.${cfg.domain}";
  endpointOf = name: "${hostOf name}:${toString cfg.port}";
  otherMembers = filter (n: n != cfg.self) memberNames;
  otherAddresses = map (n: cfg.members.${n}.address) otherMembers;
  isV6 = hasInfix ":";

  # NixOS maps the host's own FQDN and host name to 127.0.0.2 (a
  # networking.hosts entry of its own), so on a member its own member name
  # resolves to 127.0.0.2 when the host name is the member name, as by default.
  selfResolvesToLoopback =
    let
      inherit (config.networking) hostName domain;
    in
    hostName == cfg.self && domain == cfg.domain;

  keyFileDir = "/run/mongodb-keyfile";

  auth = cfg.auth;

  # The database the app's user may read and write: the app's own.
  appDatabase = if app.settings.database != null then app.settings.database else "simplechat";

  initCommand = concatStringsSep " " (
    [
      "${lib.getExe app.package}"
      "replset"
      "init"
      "--name"
      (lib.escapeShellArg cfg.name)
    ]
    ++ lib.concatMap (n: [
      "--member"
      (lib.escapeShellArg (endpointOf n))
    ]) memberNames
    # init keeps the same rules on the number of members as apply.
    ++ optional cfg.acceptEvenMembers "--allow-even-voters"
    ++ optional cfg.acceptFewerThanThreeMembers "--allow-fewer-than-three"
    # These commands run inside convergeScript, where systemd's `%d`
    # specifier is not expanded: the shell reads the credentials directory
    # (LoadCredential= below) from $CREDENTIALS_DIRECTORY, which systemd sets
    # for the unit (systemd.exec(5), "Credentials").
    ++ lib.optionals auth.enable [
      "--create-user"
      (lib.escapeShellArg auth.user)
      "--password-file"
      "\"$CREDENTIALS_DIRECTORY/app-password\""
      "--key-file"
      "\"$CREDENTIALS_DIRECTORY/keyfile\""
      "--role"
      (lib.escapeShellArg "readWrite@${appDatabase}")
      "--role"
      "clusterMonitor@admin"
    ]
  );

  # `replset apply` converges a running set to the declared members (safe
  # reconfiguration steps; idempotent), so a rebuild with a changed member
  # list changes the running set.
  applyCommand = concatStringsSep " " (
    [
      "${lib.getExe app.package}"
      "replset"
      "apply"
      "--name"
      (lib.escapeShellArg cfg.name)
    ]
    ++ lib.concatMap (n: [
      "--member"
      (lib.escapeShellArg (endpointOf n))
    ]) memberNames
    ++ optional cfg.acceptEvenMembers "--allow-even-voters"
    ++ optional cfg.acceptFewerThanThreeMembers "--allow-fewer-than-three"
    # With access control on, the members' key authenticates the
    # reconfiguration as __system (the app's user may not reconfigure).
    ++ lib.optionals auth.enable [
      "--key-file"
      "\"$CREDENTIALS_DIRECTORY/keyfile\""
    ]
  );

  # init initiates a new set; on a set initiated with other members it fails
  # and says so, and apply then changes the members. A real failure of init
  # (members not answering) makes apply fail too, and the unit retries.
  # init refuses a set initiated with other members (a changed cluster
  # file), and then has not checked the app's user either; apply converges
  # the members, and init runs again, so the unit fails when init still
  # cannot finish (say, the app's user exists with other roles) instead of
  # ending as apply does.
  convergeScript = pkgs.writeShellScript "simplechat-replset-converge" ''
    init_status=0
    ${initCommand} || init_status=$?
    ${applyCommand} || exit $?
    if [ "$init_status" -ne 0 ]; then
      echo "replset init did not finish before replset apply; running it again" >&2
      exec ${initCommand}
    fi
  '';

  secretPath = types.nullOr (
    types.pathWith {
      inStore = false;
      absolute = true;
    }
  );
in
{
  # The member runs the app; importing it here lets this module stand alone.
  imports = [
    ./simplechat.nix
    (lib.mkRemovedOptionModule [ "services" "simplechat" "replicaSet" "keyFile" ] ''
      Use services.simplechat.replicaSet.auth = { enable = true; keyFile = ...; passwordFile = ...; }:
      the key file alone turned access control on without giving the app a user.
    '')
  ];

  options.services.simplechat.replicaSet = {
    enable = lib.mkEnableOption "running this host as a member of simplechat's MongoDB replica set";

    name = mkOption {
      type = types.strMatching "[A-Za-z0-9_-]+";
      default = "rs";
      description = "Replica-set name (`replication.replSetName`).";
    };

    self = mkOption {
      type = types.str;
      example = "storage1";
      description = "Which member of {option}`services.simplechat.replicaSet.members` this host is.";
    };

    members = mkOption {
      description = ''
        Every member of the replica set, by name. The name is also the host
        name; members reach each other as `<name>.<domain>`.
      '';
      example = lib.literalExpression ''
        {
          storage1.address = "192.168.1.11";
          storage2.address = "192.168.1.12";
          storage3.address = "192.168.1.13";
        }
      '';
      type = types.attrsOf (
        types.submodule {
          options.address = mkOption {
            type = types.str;
            example = "192.168.1.11";
            description = "IP address the other members and the apps reach this member at.";
          };
        }
      );
    };

    domain = mkOption {
      type = types.str;
      default = "local";
      description = "Domain of the member host names (`storage1.local`).";
    };

    port = mkOption {
      type = types.port;
      default = 27017;
      description = "Port mongod listens on, the same on every member.";
    };

    bindAddresses = mkOption {
      type = types.listOf types.str;
      default = [
        "127.0.0.1"
        "127.0.0.2"
      ]
      ++ optional (cfg.members ? ${cfg.self}) cfg.members.${cfg.self}.address;
      defaultText = lib.literalExpression ''[ "127.0.0.1" "127.0.0.2" config.services.simplechat.replicaSet.members.''${self}.address ]'';
      description = ''
        Addresses mongod listens on: the member address, for the other members
        and the apps; 127.0.0.2, which NixOS resolves this host's own name to,
        so that mongod finds itself in the replica-set configuration and the
        local app reaches it; and 127.0.0.1 for local tools.
      '';
    };

    initiator = mkOption {
      type = types.str;
      default = head memberNames;
      defaultText = lib.literalExpression "the first member name in alphabetical order";
      description = ''
        The member that runs `simplechat replset init` once mongod is up, then
        `simplechat replset apply`, which changes the running set's members to
        the declared ones in safe steps. Both are idempotent, so running them
        on every boot and every rebuild is harmless.
      '';
    };

    acceptEvenMembers = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Let `simplechat replset init` build, and `simplechat replset apply`
        converge to, an even number of members (they refuse otherwise: a
        split in half leaves no majority). Without it, `members` with four or
        six entries fails at evaluation.
      '';
    };

    acceptFewerThanThreeMembers = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Let `simplechat replset init` build, and `simplechat replset apply`
        converge to, one or two members (they refuse otherwise: while any one
        of them is down there is no majority, so no primary and no writes).
        Without it, `members` with one or two entries fails at evaluation.
      '';
    };

    auth = {
      enable = lib.mkEnableOption ''
        access control: mongod runs with the members' key file
        (`security.keyFile`, which makes it require authentication), the
        initiating member creates the app's SCRAM-SHA-256 user with
        `readWrite` on the app's database and `clusterMonitor` (through
        MongoDB's localhost exception the first time, with the key file when
        the password file changed), and the app on every member connects as
        that user. Both secrets are read at run time through systemd's
        `LoadCredential=` and never enter the Nix store'';

      keyFile = mkOption {
        type = secretPath;
        default = null;
        example = "/run/keys/mongodb-keyfile";
        description = ''
          Key file the members authenticate each other with: the same file on
          every member, 6 to 1024 base64 characters (for example
          `openssl rand -base64 756`). The initiating member's replica-set
          unit also uses it, as `__system`, to set a changed app password and
          to change the set's members (`replset apply`).
        '';
      };

      passwordFile = mkOption {
        type = secretPath;
        default = null;
        example = "/run/keys/simplechat-mongodb-password";
        description = ''
          The app user's password: the same file on every member (the whole
          file but one final line break). Changing it and restarting
          `simplechat-replset-init` on the initiator, then `simplechat` on every
          member, rotates the password.
        '';
      };

      user = mkOption {
        type = types.strMatching "[A-Za-z0-9_.-]+";
        default = "simplechat";
        description = "Name of the app's MongoDB user (in the `admin` database).";
      };
    };

    openFirewall = mkOption {
      type = types.bool;
      default = true;
      description = "Accept connections to mongod's port from the other members' addresses only.";
    };

    compressors = mkOption {
      type = types.listOf (
        types.enum [
          "snappy"
          "zstd"
          "disabled"
        ]
      );
      default = [
        "snappy"
        "zstd"
      ];
      description = ''
        Wire-protocol compressors mongod offers (`net.compression.compressors`).
        zlib is not offered: CVE-2025-14847 let unauthenticated clients read
        mongod's memory through zlib-compressed messages.
      '';
    };

    connectionString = mkOption {
      type = types.str;
      readOnly = true;
      default =
        "mongodb://${
          lib.optionalString auth.enable "${auth.user}@"
        }${concatMapStringsSep "," endpointOf memberNames}/simplechat?replicaSet=${cfg.name}"
        + lib.optionalString auth.enable "&authSource=admin&authMechanism=SCRAM-SHA-256";
      defaultText = lib.literalExpression ''"mongodb://[USER@]storage1.local:27017,.../simplechat?replicaSet=rs[&authSource=admin&authMechanism=SCRAM-SHA-256]"'';
      description = ''
        The app's connection string, derived from the members; with
        {option}`services.simplechat.replicaSet.auth.enable` it names the
        app's user, whose password the app reads from
        {option}`services.simplechat.replicaSet.auth.passwordFile` at start.
        It holds no secret.
      '';
    };
  };

  config = mkIf (app.enable && cfg.enable) (mkMerge [
    {
      assertions = [
        {
          # The rule below speaks iptables or nftables; under firewalld it
          # would silently not exist, and the set would never elect a primary.
          assertion = cfg.openFirewall -> !(config.services.firewalld.enable or false);
          message = "services.simplechat.replicaSet.openFirewall supports the iptables and nftables firewalls only; with firewalld, open port ${toString cfg.port} to the other members yourself and set openFirewall = false.";
        }
        {
          # With avahi's nssmdns4, glibc programs (mongod, the app) ask mDNS
          # first for `*.local` names and stop at its "not found", before
          # /etc/hosts: the members would never find each other.
          assertion = !(cfg.domain == "local" && (config.services.avahi.enable or false) && (config.services.avahi.nssmdns4 or false));
          message = "services.simplechat.replicaSet: the member names end in .local, which services.avahi.nssmdns4 sends to mDNS before /etc/hosts; turn nssmdns4 off on the members or choose another services.simplechat.replicaSet.domain.";
        }
        {
          assertion = cfg.members ? ${cfg.self};
          message = "services.simplechat.replicaSet.self = \"${cfg.self}\" is not one of the members (${concatStringsSep ", " memberNames}).";
        }
        {
          assertion = cfg.members ? ${cfg.initiator};
          message = "services.simplechat.replicaSet.initiator = \"${cfg.initiator}\" is not one of the members.";
        }
        {
          # Before any user exists, only a loopback connection may initiate a
          # set whose members require authentication and create its first
          # user (MongoDB's localhost exception); `replset init` connects to
          # the first member by name.
          assertion = auth.enable && cfg.self == cfg.initiator -> selfResolvesToLoopback && head memberNames == cfg.self;
          message = "services.simplechat.replicaSet.auth: the initiator must be the first member and have networking.hostName = self and networking.domain = domain, so that it reaches itself over loopback to initiate the set and create the app's user.";
        }
        {
          assertion = auth.enable -> auth.keyFile != null && auth.passwordFile != null;
          message = "services.simplechat.replicaSet.auth.enable needs both auth.keyFile (the members' key file) and auth.passwordFile (the app user's password), as paths outside the Nix store.";
        }
        {
          assertion = auth.enable -> app.mongodbUriFile == null;
          message = "services.simplechat.replicaSet.auth gives the app its user and password itself; unset services.simplechat.mongodbUriFile.";
        }
        {
          # The rules `replset init` and `apply` keep to, at evaluation rather
          # than when the unit runs at switch time. Two is also even;
          # acceptFewerThanThreeMembers is the one decision it asks for, as
          # `replset` asks for --allow-fewer-than-three only.
          assertion = length memberNames < 3 -> cfg.acceptFewerThanThreeMembers;
          message = "services.simplechat.replicaSet.members has ${toString (length memberNames)}: fewer than three survive no member failure (while any one is down there is no majority, so no primary and no writes); declare at least three, or set services.simplechat.replicaSet.acceptFewerThanThreeMembers = true.";
        }
        {
          assertion = length memberNames >= 3 && lib.mod (length memberNames) 2 == 0 -> cfg.acceptEvenMembers;
          message = "services.simplechat.replicaSet.members has ${toString (length memberNames)}: an even number survives no more failures than one member fewer, and a split in half has no majority and no primary; declare an odd number, or set services.simplechat.replicaSet.acceptEvenMembers = true.";
        }
      ];

      # Above mkDefault (1000), below a plain definition (100): the cloud
      # images' profiles (amazon-image.nix, google-compute-config.nix,
      # openstack-config.nix) set `networking.hostName = mkDefault ""` to
      # take the name from the cloud at boot, and two definitions of one
      # string at one priority are a conflict, so at mkDefault a member on
      # EC2 would not evaluate unless its host name were set by hand.
      networking.hostName = lib.mkOverride 900 cfg.self;
      networking.domain = mkDefault cfg.domain;

      # Every other member by its address. The member's own name is left to
      # NixOS's 127.0.0.2 entry (see bindAddresses), so that on the member it
      # resolves to loopback only: /etc/hosts lists networking.hosts sorted by
      # address as text (a member at 10.0.0.5 would come before 127.0.0.2),
      # and resolvers may sort the member address first. A client on the
      # member that reached mongod through the member address would not be
      # a localhost connection, which the initiation with auth.enable needs.
      networking.hosts = mapAttrs' (
        n: m:
        nameValuePair m.address [
          (hostOf n)
          n
        ]
      ) (if selfResolvesToLoopback then removeAttrs cfg.members [ cfg.self ] else cfg.members);

      services.mongodb = {
        enable = true;
        package = mkDefault pkgs.mongodb-ce;
        replSetName = cfg.name;
        bind_ip = concatStringsSep "," cfg.bindAddresses;
        # The nixpkgs module already writes net.bindIp, storage.dbPath,
        # systemLog.* and replication.replSetName; only what it lacks goes here.
        # Wire compression without zlib: CVE-2025-14847 (pre-auth memory
        # disclosure) is in mongod's zlib decompression; snappy and zstd stay.
        extraConfig = lib.concatLines (
          [ "net.compression.compressors: ${concatStringsSep "," cfg.compressors}" ]
          ++ optional (cfg.port != 27017) "net.port: ${toString cfg.port}"
          ++ optional auth.enable "security.keyFile: ${keyFileDir}/keyfile"
        );
      };

      # mongod binds the member address, which DHCP (or the address unit) may
      # configure after mongod starts. Binding an address the host does not
      # have yet is then allowed, so mongod starts whatever the order and never
      # fails with "Cannot assign requested address".
      boot.kernel.sysctl = {
        "net.ipv4.ip_nonlocal_bind" = mkDefault true;
        "net.ipv6.ip_nonlocal_bind" = mkDefault true;
      };

      systemd.services.mongodb = mkMerge [
        {
          # What MongoDB's production notes ask for: enough file descriptors
          # (connections and data files), and glibc's rseq registration off,
          # which mongod 8's tcmalloc needs (it warns at startup otherwise).
          environment.GLIBC_TUNABLES = "glibc.pthread.rseq=0";
          serviceConfig = {
            LimitNOFILE = 64000;
            # Only for crashes: the member address does not need to exist
            # yet (ip_nonlocal_bind above).
            Restart = "on-failure";
            RestartSec = 5;
          };
        }
        (mkIf auth.enable {
          # mongod refuses a key file that its group or others could read; a
          # credential may carry an ACL that shows as group bits, so it is
          # copied with mode 0400 into a directory only mongod's user can
          # enter. preStart runs as root (the nixpkgs unit sets
          # PermissionsStartOnly) and sees the credentials (systemd >= 252).
          serviceConfig = {
            LoadCredential = [ "keyfile:${toString auth.keyFile}" ];
            RuntimeDirectory = baseNameOf keyFileDir;
            RuntimeDirectoryMode = "0700";
          };
          preStart = ''
            install -m 0400 -o ${config.services.mongodb.user} "$CREDENTIALS_DIRECTORY/keyfile" ${keyFileDir}/keyfile
          '';
        })
      ];

      # Only the other members need mongod; the apps on every member reach it
      # from a member address too. The rule is written for the firewall's
      # backend (nixpkgs' networking.firewall.backend, which defaults from
      # networking.nftables.enable but may be set apart from it; the
      # nftables backend refuses extraCommands), or, in a nixpkgs without
      # that option, for what networking.nftables.enable chooses. One
      # definition per option, each under its own condition: a condition on
      # the whole networking.firewall set would read the set it defines.
      networking.firewall.extraInputRules = mkIf (cfg.openFirewall && firewallBackend == "nftables") (
        concatMapStrings (
          a: "${if isV6 a then "ip6" else "ip"} saddr ${a} tcp dport ${toString cfg.port} accept\n"
        ) otherAddresses
      );
      networking.firewall.extraCommands = mkIf (cfg.openFirewall && firewallBackend == "iptables") (
        concatMapStrings (
          a:
          "${if isV6 a then "ip6tables" else "iptables"} -A nixos-fw -p tcp -s ${a} --dport ${toString cfg.port} -j nixos-fw-accept\n"
        ) otherAddresses
      );

      services.simplechat.settings.mongodb_uri = mkIf (app.mongodbUriFile == null) (
        mkDefault cfg.connectionString
      );
      services.simplechat.mongodbPasswordFile = mkIf auth.enable auth.passwordFile;

      systemd.services.simplechat = {
        wants = [ "mongodb.service" ];
        after = [ "mongodb.service" ];
      };

      # For operators: `simplechat replset status`, and mongosh.
      environment.systemPackages = [
        app.package
        config.services.mongodb.mongoshPackage
      ];
    }

    (mkIf (cfg.self == cfg.initiator) {
      systemd.services.simplechat-replset-init = {
        description = "Initiate the MongoDB replica set ${cfg.name} and converge its members";
        wantedBy = [ "multi-user.target" ];
        # mongod's unit counts as started once mongod forked, before it
        # accepts connections, and the other members may still be booting:
        # the command waits for every member itself, and the unit retries
        # until it succeeds. Type=exec so that a switch or boot does not
        # wait for the other members.
        wants = [
          "mongodb.service"
          "network-online.target"
        ];
        after = [
          "mongodb.service"
          "network-online.target"
        ];
        startLimitIntervalSec = 0;
        serviceConfig = {
          Type = "exec";
          RemainAfterExit = true;
          # A changed member list changes this script, so a rebuild restarts
          # the unit and the running set follows the cluster file.
          ExecStart = convergeScript;
          Restart = "on-failure";
          RestartSec = 5;

          DynamicUser = true;
          CapabilityBoundingSet = "";
          PrivateUsers = true;
          # The members' key file to set a changed password and to change
          # the members (`replset apply`), both as __system; the app's
          # password to create or check its user.
          LoadCredential = lib.optionals auth.enable [
            "keyfile:${toString auth.keyFile}"
            "app-password:${toString auth.passwordFile}"
          ];
        }
        // import ./hardening.nix;
      };
    })
  ]);
}
