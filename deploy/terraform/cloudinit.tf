# cloud-init of every role: installs the binary, writes the systemd units (restart
# policies; the client mount is guarded by `cirrus doctor` in ExecStartPre) and ends with
# cirrus-ready.service, which runs `cirrus doctor --ready` until it passes: a node is not
# reported ready before its checks pass. The cloud-config is built with yamlencode so
# that no file content can break the YAML.

locals {
  bin        = "/usr/local/bin/cirrus"
  meta_dir   = "/var/lib/cirrus/meta"
  data_mount = "/var/lib/cirrus/data"
  data_dir   = "/var/lib/cirrus/data/objects"

  s3_url = var.cirrus_binary_s3 == null ? "" : format(
    "https://%s.s3.%s.amazonaws.com/%s",
    var.cirrus_binary_s3.bucket, var.region,
    join("/", [for s in split("/", var.cirrus_binary_s3.key) : urlencode(s)])
  )

  install_script = templatefile("${path.module}/templates/cirrus-install.sh.tftpl", {
    s3_url = local.s3_url
    url    = var.cirrus_binary_url == null ? "" : var.cirrus_binary_url
    region = var.region
    sha256 = var.cirrus_binary_sha256 == null ? "" : var.cirrus_binary_sha256
  })

  # Arguments of the readiness doctor per role (the mount check only on clients).
  doctor_args = {
    meta   = "--role meta --meta ${local.meta_addrs}"
    data   = "--role data --meta ${local.meta_addrs} --data-dir ${local.data_dir}"
    client = "--role client --meta ${local.meta_addrs} --mountpoint ${var.mountpoint}"
  }

  ready_unit = { for role, svc in { meta = "cirrus-meta.service", data = "cirrus-data.service", client = "cirrus-mount.service" } : role => <<-UNIT
    [Unit]
    Description=Cirrus: final readiness check of this ${role} node (cirrus doctor --ready)
    Wants=${svc}
    After=${svc}

    [Service]
    Type=oneshot
    RemainAfterExit=yes
    ExecStart=/usr/local/sbin/cirrus-ready
    TimeoutStartSec=${var.ready_timeout_seconds + 60}

    [Install]
    WantedBy=multi-user.target
    UNIT
  }

  node_env_unit = <<-UNIT
    [Unit]
    Description=Cirrus: record this node's private address for the other units
    Wants=network-online.target
    After=network-online.target

    [Service]
    Type=oneshot
    RemainAfterExit=yes
    ExecStart=/usr/local/sbin/cirrus-node-env
    UNIT

  meta_unit = [for i in range(var.meta_count) : <<-UNIT
    [Unit]
    Description=Cirrus meta node ${i + 1} (raft voter)
    Wants=network-online.target
    After=network-online.target
    StartLimitIntervalSec=0

    [Service]
    Environment=CIRRUS_LOG=info,openraft=warn,h2=warn
    ExecStart=${local.bin} meta --id ${i + 1} --listen ${local.meta_ips[i]}:${var.ports.meta_grpc} --peers ${local.meta_peers} --dir ${local.meta_dir} --metrics-listen ${local.meta_ips[i]}:${var.ports.meta_metrics} --replicas ${var.replicas}
    Restart=always
    RestartSec=2
    TimeoutStopSec=30
    LimitNOFILE=1048576

    [Install]
    WantedBy=multi-user.target
    UNIT
  ]

  data_disk_unit = <<-UNIT
    [Unit]
    Description=Cirrus: prepare the data disk (XFS on ${var.data_storage}) at boot
    After=local-fs.target
    Before=cirrus-data.service

    [Service]
    Type=oneshot
    RemainAfterExit=yes
    ExecStart=/usr/local/sbin/cirrus-data-disk

    [Install]
    WantedBy=multi-user.target
    UNIT

  data_unit = <<-UNIT
    [Unit]
    Description=Cirrus data server
    Wants=network-online.target
    Requires=cirrus-data-disk.service cirrus-node-env.service
    After=network-online.target cirrus-data-disk.service cirrus-node-env.service
    StartLimitIntervalSec=0

    [Service]
    Environment=CIRRUS_LOG=info,h2=warn
    EnvironmentFile=/run/cirrus/node.env
    ExecStart=${local.bin} data --meta ${local.meta_addrs} --listen $${CIRRUS_IP}:${var.ports.data_grpc} --dir ${local.data_dir} --metrics-listen $${CIRRUS_IP}:${var.ports.data_metrics}
    Restart=always
    RestartSec=2
    TimeoutStopSec=30
    LimitNOFILE=1048576

    [Install]
    WantedBy=multi-user.target
    UNIT

  # The mount is guarded by doctor: it does not start (and says why in the journal)
  # while an endpoint is unreachable, the cluster ids differ, or the mount point is bad.
  # A dead FUSE mount left by a crash is lazily unmounted first. `cirrus mount` runs with
  # --foreground: without it the command returns once mounted and serves the mount from
  # a background process, so systemd (Type=simple) would see the main process exit, run
  # ExecStopPost (umount) and kill the unit's processes, then restart it, for ever
  # (found by the boot check, tests/emulator/boot.py).
  mount_unit = <<-UNIT
    [Unit]
    Description=Cirrus client mount at ${var.mountpoint}
    Wants=network-online.target
    After=network-online.target
    StartLimitIntervalSec=0

    [Service]
    Type=simple
    Environment=CIRRUS_LOG=info,h2=warn
    ExecStartPre=-/bin/umount -l ${var.mountpoint}
    ExecStartPre=/bin/mkdir -p ${var.mountpoint}
    ExecStartPre=${local.bin} doctor --role client --meta ${local.meta_addrs} --mountpoint ${var.mountpoint} --timeout 5s
    ExecStart=${local.bin} mount ${local.meta_addrs} ${var.mountpoint} --foreground
    ExecStopPost=-/bin/umount -l ${var.mountpoint}
    Restart=always
    RestartSec=5
    TimeoutStopSec=30

    [Install]
    WantedBy=multi-user.target
    UNIT

  chrony_sources = "server 169.254.169.123 prefer iburst minpoll 4 maxpoll 4\n"

  common_files = [
    { path = "/usr/local/sbin/cirrus-install", permissions = "0755", content = local.install_script },
    { path = "/etc/cirrus/meta-addrs", permissions = "0644", content = "${local.meta_addrs}\n" },
    # Amazon Time Sync: doctor fails on clock skew, so every node uses the same source.
    { path = "/etc/chrony/sources.d/amazon.sources", permissions = "0644", content = local.chrony_sources },
  ]

  ready_file = { for role in local.roles : role => {
    path        = "/usr/local/sbin/cirrus-ready"
    permissions = "0755"
    content = templatefile("${path.module}/templates/cirrus-ready.sh.tftpl", {
      role        = role
      timeout     = var.ready_timeout_seconds
      doctor_args = local.doctor_args[role]
    })
  } }

  # The host's step of a rolling upgrade (scripts/rolling-upgrade.sh drives the order).
  upgrade_file = { for role, svc in { meta = "cirrus-meta.service", data = "cirrus-data.service", client = "" } : role => {
    path        = "/usr/local/sbin/cirrus-upgrade"
    permissions = "0755"
    content = templatefile("${path.module}/templates/cirrus-upgrade.sh.tftpl", {
      role       = role
      service    = svc
      timeout    = var.ready_timeout_seconds
      mountpoint = var.mountpoint
    })
  } }

  cloud_config = {
    meta = [for i in range(var.meta_count) : {
      package_update = true
      packages       = ["curl", "chrony"]
      write_files = concat(local.common_files, [
        local.ready_file.meta,
        local.upgrade_file.meta,
        { path = "/etc/systemd/system/cirrus-meta.service", permissions = "0644", content = local.meta_unit[i] },
        { path = "/etc/systemd/system/cirrus-ready.service", permissions = "0644", content = local.ready_unit.meta },
      ])
      runcmd = [
        ["/usr/local/sbin/cirrus-install"],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "cirrus-meta.service"],
        ["systemctl", "enable", "cirrus-ready.service"],
        ["systemctl", "start", "cirrus-ready.service"],
      ]
    }]
    data = {
      package_update = true
      packages       = ["curl", "chrony", "xfsprogs", "mdadm"]
      write_files = concat(local.common_files, [
        local.ready_file.data,
        local.upgrade_file.data,
        { path = "/usr/local/sbin/cirrus-node-env", permissions = "0755", content = file("${path.module}/templates/cirrus-node-env.sh") },
        { path = "/usr/local/sbin/cirrus-data-disk", permissions = "0755", content = templatefile("${path.module}/templates/cirrus-data-disk.sh.tftpl", { mode = var.data_storage, mount = local.data_mount }) },
        { path = "/etc/systemd/system/cirrus-node-env.service", permissions = "0644", content = local.node_env_unit },
        { path = "/etc/systemd/system/cirrus-data-disk.service", permissions = "0644", content = local.data_disk_unit },
        { path = "/etc/systemd/system/cirrus-data.service", permissions = "0644", content = local.data_unit },
        { path = "/etc/systemd/system/cirrus-ready.service", permissions = "0644", content = local.ready_unit.data },
      ])
      runcmd = [
        ["/usr/local/sbin/cirrus-install"],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "cirrus-data-disk.service", "cirrus-data.service"],
        ["systemctl", "enable", "cirrus-ready.service"],
        ["systemctl", "start", "cirrus-ready.service"],
      ]
    }
    client = {
      package_update = true
      packages       = ["curl", "chrony", "fuse3"]
      write_files = concat(local.common_files, [
        local.ready_file.client,
        local.upgrade_file.client,
        { path = "/etc/systemd/system/cirrus-mount.service", permissions = "0644", content = local.mount_unit },
        { path = "/etc/systemd/system/cirrus-ready.service", permissions = "0644", content = local.ready_unit.client },
      ])
      runcmd = [
        ["/usr/local/sbin/cirrus-install"],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "cirrus-mount.service"],
        ["systemctl", "enable", "cirrus-ready.service"],
        ["systemctl", "start", "cirrus-ready.service"],
      ]
    }
  }

  user_data = {
    meta   = [for c in local.cloud_config.meta : "#cloud-config\n${yamlencode(c)}"]
    data   = "#cloud-config\n${yamlencode(local.cloud_config.data)}"
    client = "#cloud-config\n${yamlencode(local.cloud_config.client)}"
  }
}
