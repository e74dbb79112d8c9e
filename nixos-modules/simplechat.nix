# The simplechat web service.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    mkEnableOption
    mkIf
    mkOption
    mkPackageOption
    optional
    optionalAttrs
    types
    ;

  cfg = config.services.simplechat;

  settingsFormat = pkgs.formats.toml { };

  # TOML has no null: an unset key must be absent so the binary's own default
  # (or the environment) applies.
  configFile = settingsFormat.generate "simplechat.toml" (
    lib.filterAttrsRecursive (_: v: v != null) cfg.settings
  );

  stateDir = "/var/lib/simplechat";

  # The open files the app keeps for itself beside one per connection
  # (`open_files::RESERVED` in the app), for the check below.
  reservedFiles = 128;
  openFiles = config.systemd.services.simplechat.serviceConfig.LimitNOFILE;
  maxConnections = cfg.settings.max_connections or 1024;

  # A secret path is a string read at run time; a Nix path literal would be
  # copied into the world-readable store.
  secretPath = types.nullOr (
    types.pathWith {
      inStore = false;
      absolute = true;
    }
  );
in
{
  options.services.simplechat = {
    enable = mkEnableOption "simplechat, a chat service whose messages live in MongoDB";

    package = mkPackageOption pkgs "simplechat" { };

    settings = mkOption {
      description = ''
        simplechat configuration, written to a TOML file handed to the service
        through `SIMPLECHAT_CONFIG`. Keys are those of `simplechat config`.
        Do not put credentials here: the file lands in the Nix store. Use
        {option}`services.simplechat.mongodbUriFile` for a URI with a password.
      '';
      default = { };
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          address = mkOption {
            type = types.str;
            default = "127.0.0.1";
            example = "0.0.0.0";
            description = "Address the web server listens on.";
          };
          port = mkOption {
            type = types.port;
            default = 8000;
            description = "Port the web server listens on.";
          };
          mongodb_uri = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "mongodb://storage1.local:27017,storage2.local:27017,storage3.local:27017/simplechat?replicaSet=rs";
            description = ''
              MongoDB connection string without credentials; null means the
              embedded store (or the URI from {option}`services.simplechat.mongodbUriFile`).
              Set by the replica-set module when it is enabled.
            '';
          };
          database = mkOption {
            type = types.nullOr types.str;
            default = null;
            description = "Database name; null means the connection string's path, else `simplechat`.";
          };
          data_dir = mkOption {
            type = types.str;
            default = stateDir;
            description = "Where the embedded store keeps its files (the service's state directory).";
          };
          write_timeout_secs = mkOption {
            type = types.ints.positive;
            default = 30;
            description = "How long a POST may wait for a writable primary before answering 503.";
          };
        };
      };
    };

    mongodbUriFile = mkOption {
      type = secretPath;
      default = null;
      example = "/run/keys/simplechat-mongodb-uri";
      description = ''
        File holding the MongoDB connection string, for a URI that carries
        credentials. It is passed to the service with systemd's
        `LoadCredential=` and never copied into the Nix store.
      '';
    };

    mongodbPasswordFile = mkOption {
      type = secretPath;
      default = null;
      example = "/run/keys/simplechat-mongodb-password";
      description = ''
        File holding the password of the user named in the connection string
        (`mongodb://USER@hosts/...`); the app percent-encodes it into the
        URI at start (`mongodb_password_file`). Passed with systemd's
        `LoadCredential=`, never copied into the Nix store. The whole file is
        the password but one final line break.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open {option}`services.simplechat.settings.port` in the firewall.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.mongodbUriFile == null || cfg.settings.mongodb_uri == null;
        message = "services.simplechat: set either settings.mongodb_uri or mongodbUriFile, not both.";
      }
      {
        assertion = cfg.mongodbPasswordFile != null -> (cfg.settings.mongodb_uri != null || cfg.mongodbUriFile != null);
        message = "services.simplechat.mongodbPasswordFile needs a connection string naming the user (settings.mongodb_uri or mongodbUriFile).";
      }
      {
        # A string ("infinity", "soft:hard") is the user's own choice.
        assertion = !(builtins.isInt openFiles) || maxConnections + reservedFiles <= openFiles;
        message = "services.simplechat: settings.max_connections (${toString maxConnections}) needs systemd.services.simplechat.serviceConfig.LimitNOFILE of at least ${toString (maxConnections + reservedFiles)}; the app would serve fewer connections.";
      }
    ];

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ cfg.settings.port ];

    systemd.services.simplechat = {
      description = "simplechat chat service";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];

      environment = {
        SIMPLECHAT_CONFIG = "${configFile}";
      }
      // optionalAttrs (cfg.mongodbUriFile != null) {
        # systemd expands %d (the credentials directory) in Environment=, not
        # in the TOML file, so the path goes through the environment.
        SIMPLECHAT_MONGODB_URI_FILE = "%d/mongodb-uri";
      }
      // optionalAttrs (cfg.mongodbPasswordFile != null) {
        SIMPLECHAT_MONGODB_PASSWORD_FILE = "%d/mongodb-password";
      };

      serviceConfig = {
        ExecStart = "${lib.getExe cfg.package} serve";
        Restart = "on-failure";
        RestartSec = 2;
        # A start that fails for a reason no restart mends exits with its
        # own status (README, "Exit status"): 78 (EX_CONFIG) a configuration
        # that cannot be used, 65 (EX_DATAERR) a damaged data file, 73
        # (EX_CANTCREAT) a data directory or file that cannot be written.
        # Restarting would only say it again until the start limit
        # (systemd.service(5), RestartPreventExitStatus=); the unit stays
        # failed with that line in its log. Status 1 (a port in use, a full
        # disk, an I/O error) is still restarted.
        RestartPreventExitStatus = [
          65
          73
          78
        ];
        # One descriptor per connection: systemd's default soft limit, 1024,
        # is the default max_connections with nothing left for the process,
        # and the hard limit the app raises it to (systemd.exec(5),
        # LimitNOFILE=) is the host's DefaultLimitNOFILE, not this unit's.
        # 65536, as nixpkgs' nomad and minio units set it, fits 65,408
        # connections beside the 128 the app keeps.
        LimitNOFILE = lib.mkDefault 65536;

        DynamicUser = true;
        StateDirectory = "simplechat";
        StateDirectoryMode = "0700";
        WorkingDirectory = stateDir;
        LoadCredential =
          optional (cfg.mongodbUriFile != null) "mongodb-uri:${cfg.mongodbUriFile}"
          ++ optional (cfg.mongodbPasswordFile != null) "mongodb-password:${cfg.mongodbPasswordFile}";

        # The service only serves HTTP, talks to MongoDB and writes its state
        # directory.
        CapabilityBoundingSet = if cfg.settings.port < 1024 then "CAP_NET_BIND_SERVICE" else "";
        AmbientCapabilities = optional (cfg.settings.port < 1024) "CAP_NET_BIND_SERVICE";
        # A private user namespace would keep CAP_NET_BIND_SERVICE from
        # counting in the host's network namespace.
        PrivateUsers = cfg.settings.port >= 1024;
        DevicePolicy = "closed";
        RemoveIPC = true;
      }
      // import ./hardening.nix;
    };
  };
}
