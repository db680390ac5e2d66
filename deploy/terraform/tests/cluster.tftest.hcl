# `terraform test` of the module against a mocked AWS provider (no account, no network):
# counts, the exact security group rules, IMDSv2 and encryption, the user data of each
# role, the AZ spread of the meta nodes, and the refusal of unsafe inputs.

mock_provider "aws" {
  mock_data "aws_ami" {
    defaults = {
      id = "ami-0123456789abcdef0"
    }
  }
}

variables {
  region             = "eu-west-1"
  availability_zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
  admin_cidr         = "203.0.113.0/24"
  cirrus_binary_url  = "https://downloads.example.com/cirrus/v0.1.0/cirrus"
  ssh_key_name       = "ops"
  wait_for_ready     = false
}

run "default_cluster_counts_and_placement" {
  command = apply

  assert {
    condition     = length(aws_instance.meta) == 3 && length(aws_instance.data) == 3 && length(aws_instance.client) == 1
    error_message = "expected 3 meta, 3 data and 1 client instances"
  }

  assert {
    condition     = length(aws_vpc.cluster) == 1 && length(aws_subnet.cluster) == 3 && length(aws_internet_gateway.cluster) == 1
    error_message = "expected one VPC with one subnet per zone and an internet gateway"
  }

  assert {
    condition     = [for s in aws_subnet.cluster : s.cidr_block] == ["10.42.0.0/24", "10.42.1.0/24", "10.42.2.0/24"]
    error_message = "subnets are not the /24s of the VPC CIDR, one per zone"
  }

  assert {
    condition     = length(aws_placement_group.data) == 1 && aws_placement_group.data[0].strategy == "cluster"
    error_message = "expected one cluster placement group"
  }

  assert {
    condition = alltrue(concat(
      [for i in aws_instance.data : i.placement_group == aws_placement_group.data[0].name && i.subnet_id == aws_subnet.cluster[0].id],
      [for i in aws_instance.client : i.placement_group == aws_placement_group.data[0].name && i.subnet_id == aws_subnet.cluster[0].id],
    ))
    error_message = "data servers and clients must share the placement group in the first zone"
  }

  assert {
    condition     = alltrue([for i in aws_instance.meta : i.placement_group != aws_placement_group.data[0].name])
    error_message = "meta nodes must not be in the (single-zone) placement group"
  }
}

run "meta_nodes_spread_over_three_zones_at_fixed_addresses" {
  command = apply

  assert {
    condition = [for i in aws_instance.meta : one([for s in aws_subnet.cluster : s.availability_zone if s.id == i.subnet_id])] == [
      "eu-west-1a", "eu-west-1b", "eu-west-1c"
    ]
    error_message = "meta node i must sit in zone i: one meta node per availability zone"
  }

  assert {
    condition     = aws_instance.meta[*].private_ip == ["10.42.0.10", "10.42.1.11", "10.42.2.12"]
    error_message = "meta addresses must be fixed (raft identity): host 10+i of their zone's subnet"
  }

  assert {
    condition     = output.meta_endpoints == ["10.42.0.10:7001", "10.42.1.11:7001", "10.42.2.12:7001"]
    error_message = "meta_endpoints output is wrong"
  }

  assert {
    condition     = output.mount_command == "sudo cirrus mount 10.42.0.10:7001,10.42.1.11:7001,10.42.2.12:7001 /mnt/cirrus"
    error_message = "mount_command output is wrong: ${output.mount_command}"
  }

  assert {
    condition     = length(output.ssh_commands.meta) == 3 && length(output.ssh_commands.data) == 3 && length(output.ssh_commands.client) == 1 && startswith(output.ssh_commands.meta[0], "ssh admin@")
    error_message = "ssh_commands must list one command per node"
  }
}

run "security_groups_open_exactly_the_readme_ports" {
  command = apply

  assert {
    condition = output.ingress_rules == sort([
      "meta 7001-7001/tcp from sg:meta",
      "meta 7001-7001/tcp from sg:data",
      "meta 7001-7001/tcp from sg:client",
      "meta 7002-7002/tcp from sg:meta",
      "meta 7002-7002/tcp from sg:data",
      "data 7101-7101/tcp from sg:meta",
      "data 7101-7101/tcp from sg:data",
      "data 7101-7101/tcp from sg:client",
      "data 7102-7102/tcp from sg:meta",
      "data 7102-7102/tcp from sg:data",
      "meta 22-22/tcp from cidr:203.0.113.0/24",
      "data 22-22/tcp from cidr:203.0.113.0/24",
      "client 22-22/tcp from cidr:203.0.113.0/24",
    ])
    error_message = "ingress rules differ from the README port table: ${jsonencode(output.ingress_rules)}"
  }

  assert {
    condition = output.egress_rules == sort([
      "meta 7001-7001/tcp to sg:meta",
      "data 7001-7001/tcp to sg:meta",
      "client 7001-7001/tcp to sg:meta",
      "meta 7002-7002/tcp to sg:meta",
      "data 7002-7002/tcp to sg:meta",
      "meta 7101-7101/tcp to sg:data",
      "data 7101-7101/tcp to sg:data",
      "client 7101-7101/tcp to sg:data",
      "meta 7102-7102/tcp to sg:data",
      "data 7102-7102/tcp to sg:data",
      "meta 80-80/tcp to cidr:0.0.0.0/0",
      "meta 443-443/tcp to cidr:0.0.0.0/0",
      "data 80-80/tcp to cidr:0.0.0.0/0",
      "data 443-443/tcp to cidr:0.0.0.0/0",
      "client 80-80/tcp to cidr:0.0.0.0/0",
      "client 443-443/tcp to cidr:0.0.0.0/0",
    ])
    error_message = "egress rules differ: ${jsonencode(output.egress_rules)}"
  }

  # The same property stated as an absence, on the raw resources: no CIDR at all on a
  # cluster port, and the only CIDR-based ingress is SSH from the admin CIDR.
  assert {
    condition = alltrue([
      for r in concat(values(aws_vpc_security_group_ingress_rule.cluster), values(aws_vpc_security_group_egress_rule.cluster)) :
      r.cidr_ipv4 == null && r.cidr_ipv6 == null && r.referenced_security_group_id != null && contains([7001, 7002, 7101, 7102], r.from_port) && r.from_port == r.to_port
    ])
    error_message = "a cluster-port rule is open to a CIDR (0.0.0.0/0?) or spans a port range"
  }

  assert {
    condition     = alltrue([for r in values(aws_vpc_security_group_ingress_rule.ssh) : r.cidr_ipv4 == "203.0.113.0/24" && r.from_port == 22 && r.to_port == 22])
    error_message = "SSH must be open from the admin CIDR only"
  }

  assert {
    condition     = length(aws_default_security_group.cluster) == 1 && length(aws_default_security_group.cluster[0].ingress) == 0 && length(aws_default_security_group.cluster[0].egress) == 0
    error_message = "the VPC's default security group must be stripped of rules"
  }
}

run "instances_require_imdsv2_and_encrypt_every_volume" {
  command = apply

  assert {
    condition = alltrue([
      for i in concat(aws_instance.meta, aws_instance.data, aws_instance.client) :
      i.metadata_options[0].http_tokens == "required" && i.metadata_options[0].http_put_response_hop_limit == 1 && i.root_block_device[0].encrypted && i.root_block_device[0].volume_type == "gp3"
    ])
    error_message = "every instance must require IMDSv2 (hop limit 1) and have an encrypted gp3 root volume"
  }

  assert {
    condition     = alltrue([for i in aws_instance.data : length(i.ebs_block_device) == 0])
    error_message = "with data_storage = nvme, data servers get no extra EBS volume"
  }

  assert {
    condition     = length(aws_iam_role_policy.binary) == 0
    error_message = "with a URL binary the instance role must have no policy at all"
  }

  assert {
    condition     = jsondecode(aws_iam_role.node.assume_role_policy).Statement[0].Principal.Service == "ec2.amazonaws.com"
    error_message = "the node role must be assumable by EC2 only"
  }
}

run "user_data_installs_binary_units_and_doctor" {
  command = apply

  assert {
    condition     = startswith(aws_instance.meta[0].user_data, "#cloud-config\n") && length(aws_instance.meta[0].user_data) < 16384 && length(aws_instance.data[0].user_data) < 16384 && length(aws_instance.client[0].user_data) < 16384
    error_message = "user data must be a cloud-config under EC2's 16 KiB limit"
  }

  assert {
    condition     = strcontains(aws_instance.meta[1].user_data, "ExecStart=/usr/local/bin/cirrus meta --id 2 --listen 10.42.1.11:7001 --peers 1=10.42.0.10:7001,2=10.42.1.11:7001,3=10.42.2.12:7001 --dir /var/lib/cirrus/meta --metrics-listen 10.42.1.11:7002 --replicas 2")
    error_message = "meta node 2's unit must run `cirrus meta` with its id, address, the peers and the metrics port"
  }

  assert {
    condition     = strcontains(aws_instance.data[0].user_data, "ExecStart=/usr/local/bin/cirrus data --meta 10.42.0.10:7001,10.42.1.11:7001,10.42.2.12:7001 --listen $${CIRRUS_IP}:7101 --dir /var/lib/cirrus/data/objects --metrics-listen $${CIRRUS_IP}:7102")
    error_message = "the data unit must run `cirrus data` against the meta group on its own address"
  }

  assert {
    condition     = strcontains(aws_instance.data[0].user_data, "mkfs.xfs") && strcontains(aws_instance.data[0].user_data, "Amazon EC2 NVMe Instance Storage") && strcontains(aws_instance.data[0].user_data, "Requires=cirrus-data-disk.service")
    error_message = "data servers must format the NVMe instance store as XFS at boot, before the data server starts"
  }

  assert {
    condition = alltrue([
      for ud in [aws_instance.meta[0].user_data, aws_instance.data[0].user_data, aws_instance.client[0].user_data] :
      strcontains(ud, "Restart=always") && strcontains(ud, "curl -sSfL --max-time 300 --retry 10 --retry-delay 3 -o \"$tmp\" 'https://downloads.example.com/cirrus/v0.1.0/cirrus'") && strcontains(ud, "/usr/local/bin/cirrus doctor --ready")
    ])
    error_message = "every role must install the binary, restart its daemon always and end with the doctor readiness check"
  }

  assert {
    condition     = strcontains(aws_instance.client[0].user_data, "ExecStartPre=/usr/local/bin/cirrus doctor --role client --meta 10.42.0.10:7001,10.42.1.11:7001,10.42.2.12:7001 --mountpoint /mnt/cirrus --timeout 5s") && strcontains(aws_instance.client[0].user_data, "ExecStart=/usr/local/bin/cirrus mount 10.42.0.10:7001,10.42.1.11:7001,10.42.2.12:7001 /mnt/cirrus --foreground\n")
    error_message = "the client mount must be guarded by `cirrus doctor` in ExecStartPre, and `cirrus mount` must stay in the foreground (Type=simple)"
  }

  assert {
    condition     = strcontains(aws_instance.client[0].user_data, "--role client --meta 10.42.0.10:7001,10.42.1.11:7001,10.42.2.12:7001 --mountpoint /mnt/cirrus >/run/cirrus/doctor.txt")
    error_message = "the client's final readiness step must run doctor against the mount"
  }

  # The last runcmd of every role starts the readiness check (the step that reports ready).
  assert {
    condition = alltrue([
      for ud in [aws_instance.meta[2].user_data, aws_instance.data[1].user_data, aws_instance.client[0].user_data] :
      yamldecode(trimprefix(ud, "#cloud-config\n")).runcmd[length(yamldecode(trimprefix(ud, "#cloud-config\n")).runcmd) - 1] == ["systemctl", "start", "cirrus-ready.service"]
    ])
    error_message = "cirrus-ready (doctor) must be the final step of cloud-init"
  }

  # The rolling upgrade's host step: servers wait for health, restart their own unit and
  # wait again; a client only installs (its mount moves at the next remount).
  assert {
    condition = alltrue([
      for pair in [[aws_instance.meta[0].user_data, "cirrus-meta.service"], [aws_instance.data[0].user_data, "cirrus-data.service"]] :
      strcontains(pair[0], "/usr/local/sbin/cirrus-upgrade") && strcontains(pair[0], "systemctl restart ${pair[1]}") && strcontains(pair[0], "upgrade wait --meta \"$meta\" --timeout 900s --settle 5s")
    ]) && strcontains(aws_instance.client[0].user_data, "/usr/local/sbin/cirrus-upgrade") && !strcontains(aws_instance.client[0].user_data, "\n    systemctl restart")
    error_message = "every role must carry /usr/local/sbin/cirrus-upgrade: meta and data restart their own unit between two health waits, a client restarts nothing"
  }
}

run "ebs_storage_s3_binary_without_placement_group" {
  command = apply

  variables {
    cirrus_binary_url    = null
    cirrus_binary_s3     = { bucket = "acme-artifacts", key = "cirrus/v0.1.0/cirrus" }
    cirrus_binary_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
    data_storage         = "ebs"
    placement_group      = false
    data_count           = 4
    client_count         = 2
    replicas             = 3
  }

  assert {
    condition     = length(aws_instance.data) == 4 && length(aws_instance.client) == 2 && length(aws_placement_group.data) == 0
    error_message = "counts or placement group wrong"
  }

  assert {
    condition = alltrue([
      for i in aws_instance.data : length(i.ebs_block_device) == 1 && alltrue([
        for v in i.ebs_block_device : v.encrypted && v.volume_type == "gp3" && v.volume_size == 500 && v.iops == 6000 && v.throughput == 500
      ])
    ])
    error_message = "each data server needs one encrypted gp3 volume"
  }

  assert {
    condition     = jsondecode(aws_iam_role_policy.binary[0].policy).Statement == [{ Sid = "ReadCirrusBinary", Effect = "Allow", Action = ["s3:GetObject"], Resource = ["arn:aws:s3:::acme-artifacts/cirrus/v0.1.0/cirrus"] }]
    error_message = "the role may read exactly the binary object and nothing else"
  }

  assert {
    condition     = strcontains(aws_instance.meta[0].user_data, "--aws-sigv4 \"aws:amz:eu-west-1:s3\"") && strcontains(aws_instance.meta[0].user_data, "https://acme-artifacts.s3.eu-west-1.amazonaws.com/cirrus/v0.1.0/cirrus") && strcontains(aws_instance.meta[0].user_data, "sha256sum -c")
    error_message = "the S3 download must be signed with the instance role and checked against the sha256"
  }

  assert {
    condition     = strcontains(aws_instance.data[0].user_data, "Amazon Elastic Block Store") && strcontains(aws_instance.meta[0].user_data, "--replicas 3")
    error_message = "ebs mode must look for the EBS volume; replicas must reach the meta command"
  }
}

run "given_subnets_are_used_and_no_vpc_is_created" {
  command = apply

  variables {
    subnet_ids = ["subnet-a", "subnet-b", "subnet-c"]
  }

  override_data {
    target = data.aws_subnet.given[0]
    values = { id = "subnet-a", vpc_id = "vpc-given", cidr_block = "172.31.0.0/20", availability_zone = "eu-west-1a" }
  }
  override_data {
    target = data.aws_subnet.given[1]
    values = { id = "subnet-b", vpc_id = "vpc-given", cidr_block = "172.31.16.0/20", availability_zone = "eu-west-1b" }
  }
  override_data {
    target = data.aws_subnet.given[2]
    values = { id = "subnet-c", vpc_id = "vpc-given", cidr_block = "172.31.32.0/20", availability_zone = "eu-west-1c" }
  }

  assert {
    condition     = length(aws_vpc.cluster) == 0 && length(aws_subnet.cluster) == 0 && aws_security_group.meta.vpc_id == "vpc-given"
    error_message = "with subnet_ids no network may be created"
  }

  assert {
    condition     = aws_instance.meta[*].subnet_id == ["subnet-a", "subnet-b", "subnet-c"] && aws_instance.meta[*].private_ip == ["172.31.0.10", "172.31.16.11", "172.31.32.12"]
    error_message = "meta nodes must spread over the given subnets at fixed addresses"
  }
}

run "wait_for_ready_probes_first_meta_and_first_client" {
  command = plan

  variables {
    wait_for_ready = true
  }

  assert {
    condition     = keys(terraform_data.ready) == ["client", "meta"]
    error_message = "apply must wait for doctor on the first meta node and the first client"
  }
}

run "admin_cidr_open_to_the_world_is_refused" {
  command = plan

  variables {
    admin_cidr = "0.0.0.0/0"
  }

  expect_failures = [var.admin_cidr]
}

run "one_data_server_is_refused" {
  command = plan

  variables {
    data_count = 1
    replicas   = 1
  }

  expect_failures = [var.data_count]
}

run "two_binary_sources_are_refused" {
  command = plan

  variables {
    cirrus_binary_s3 = { bucket = "b", key = "k" }
  }

  expect_failures = [var.cirrus_binary_s3]
}

run "waiting_without_an_ssh_key_is_refused" {
  command = plan

  variables {
    wait_for_ready = true
    ssh_key_name   = null
  }

  expect_failures = [terraform_data.ready]
}
