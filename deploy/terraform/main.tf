# Instances of the three roles. Meta nodes: fixed addresses, spread round-robin over the
# zones. Data servers and clients: in the first zone, in one cluster placement group when
# placement_group is on (the data path is client <-> data and data <-> data).

locals {
  tags = merge({ Project = "cirrus", Cluster = var.name }, var.tags)

  # Meta node i sits in zone i % zones, at host 10 + i of that zone's subnet.
  meta_subnet_index = [for i in range(var.meta_count) : i % local.az_count]
  meta_ips          = [for i in range(var.meta_count) : cidrhost(local.planned_subnet_cidrs[local.meta_subnet_index[i]], 10 + i)]
  meta_addrs        = join(",", [for ip in local.meta_ips : "${ip}:${var.ports.meta_grpc}"])
  meta_peers        = join(",", [for i, ip in local.meta_ips : "${i + 1}=${ip}:${var.ports.meta_grpc}"])

  ami_id          = var.ami_id != null ? var.ami_id : data.aws_ami.debian[0].id
  placement_group = var.placement_group ? aws_placement_group.data[0].name : null
}

data "aws_ami" "debian" {
  count       = var.ami_id == null ? 1 : 0
  most_recent = true
  owners      = ["136693071363"] # Debian's official AWS account

  filter {
    name   = "name"
    values = ["debian-12-amd64-*"]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }
}

resource "aws_placement_group" "data" {
  count    = var.placement_group ? 1 : 0
  name     = "${var.name}-data"
  strategy = "cluster"
  tags     = local.tags
}

resource "aws_instance" "meta" {
  # checkov:skip=CKV_AWS_88: a public IP is what lets SSH from admin_cidr (the only open port) and downloads work without a NAT; assign_public_ips = false turns it off
  count                       = var.meta_count
  ami                         = local.ami_id
  instance_type               = var.meta_instance_type
  subnet_id                   = local.subnet_ids[local.meta_subnet_index[count.index]]
  private_ip                  = local.meta_ips[count.index]
  vpc_security_group_ids      = [aws_security_group.meta.id]
  associate_public_ip_address = var.assign_public_ips
  key_name                    = var.ssh_key_name
  iam_instance_profile        = aws_iam_instance_profile.node.name
  user_data                   = local.user_data.meta[count.index]
  user_data_replace_on_change = false
  monitoring                  = true
  ebs_optimized               = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = var.root_volume_size_gb
    encrypted   = true
    kms_key_id  = var.kms_key_id
  }

  tags = merge(local.tags, { Name = "${var.name}-meta-${count.index + 1}", Role = "meta" })

  lifecycle {
    # A raft member's address is its identity: never move it to another one.
    ignore_changes = [ami]
  }
}

resource "aws_instance" "data" {
  # checkov:skip=CKV_AWS_88: a public IP is what lets SSH from admin_cidr (the only open port) and downloads work without a NAT; assign_public_ips = false turns it off
  count                       = var.data_count
  ami                         = local.ami_id
  instance_type               = var.data_instance_type
  subnet_id                   = local.subnet_ids[0]
  placement_group             = local.placement_group
  vpc_security_group_ids      = [aws_security_group.data.id]
  associate_public_ip_address = var.assign_public_ips
  key_name                    = var.ssh_key_name
  iam_instance_profile        = aws_iam_instance_profile.node.name
  user_data                   = local.user_data.data
  monitoring                  = true
  ebs_optimized               = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = var.root_volume_size_gb
    encrypted   = true
    kms_key_id  = var.kms_key_id
  }

  dynamic "ebs_block_device" {
    for_each = var.data_storage == "ebs" ? [var.data_ebs] : []
    content {
      device_name           = "/dev/sdf"
      volume_type           = "gp3"
      volume_size           = ebs_block_device.value.size_gb
      iops                  = ebs_block_device.value.iops
      throughput            = ebs_block_device.value.throughput
      encrypted             = true
      kms_key_id            = var.kms_key_id
      delete_on_termination = true
    }
  }

  tags = merge(local.tags, { Name = "${var.name}-data-${count.index + 1}", Role = "data" })

  lifecycle {
    ignore_changes = [ami]
  }
}

resource "aws_instance" "client" {
  # checkov:skip=CKV_AWS_88: a public IP is what lets SSH from admin_cidr (the only open port) and downloads work without a NAT; assign_public_ips = false turns it off
  count                       = var.client_count
  ami                         = local.ami_id
  instance_type               = var.client_instance_type
  subnet_id                   = local.subnet_ids[0]
  placement_group             = local.placement_group
  vpc_security_group_ids      = [aws_security_group.client.id]
  associate_public_ip_address = var.assign_public_ips
  key_name                    = var.ssh_key_name
  iam_instance_profile        = aws_iam_instance_profile.node.name
  user_data                   = local.user_data.client
  monitoring                  = true
  ebs_optimized               = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = var.root_volume_size_gb
    encrypted   = true
    kms_key_id  = var.kms_key_id
  }

  tags = merge(local.tags, { Name = "${var.name}-client-${count.index + 1}", Role = "client" })

  lifecycle {
    ignore_changes = [ami]
  }
}
