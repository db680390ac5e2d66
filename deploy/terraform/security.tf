# Security groups: one per role. Between members they open exactly the README ports:
#   meta 7001/tcp gRPC (clients, data servers, raft between meta nodes) and 7002/tcp metrics,
#   data 7101/tcp gRPC (clients, replication between data servers, meta) and 7102/tcp metrics.
# Clients reach only the gRPC ports; metrics are scraped from inside the server groups.
# From outside the cluster only SSH (22/tcp) from admin_cidr is open. Egress is limited to
# the same cluster ports plus HTTP/HTTPS for packages and the binary download.

locals {
  sg_ids = {
    meta   = aws_security_group.meta.id
    data   = aws_security_group.data.id
    client = aws_security_group.client.id
  }

  # key => which group it opens (to), the port, and which group may connect (from).
  cluster_port_rules = {
    meta_grpc_from_meta    = { to = "meta", port = var.ports.meta_grpc, from = "meta", what = "raft between meta nodes" }
    meta_grpc_from_data    = { to = "meta", port = var.ports.meta_grpc, from = "data", what = "data server registration and heartbeats" }
    meta_grpc_from_client  = { to = "meta", port = var.ports.meta_grpc, from = "client", what = "client metadata API" }
    meta_metrics_from_meta = { to = "meta", port = var.ports.meta_metrics, from = "meta", what = "metrics and health from meta nodes" }
    meta_metrics_from_data = { to = "meta", port = var.ports.meta_metrics, from = "data", what = "metrics and health from data servers" }
    data_grpc_from_meta    = { to = "data", port = var.ports.data_grpc, from = "meta", what = "meta probes of data servers" }
    data_grpc_from_data    = { to = "data", port = var.ports.data_grpc, from = "data", what = "chain replication and rebuild" }
    data_grpc_from_client  = { to = "data", port = var.ports.data_grpc, from = "client", what = "client reads and writes" }
    data_metrics_from_meta = { to = "data", port = var.ports.data_metrics, from = "meta", what = "metrics and health from meta nodes" }
    data_metrics_from_data = { to = "data", port = var.ports.data_metrics, from = "data", what = "metrics and health from data servers" }
  }

  # The same pairs seen from the connecting side.
  cluster_egress_rules = {
    for k, r in local.cluster_port_rules : "${r.from}_to_${k}" => r
  }

  roles = ["meta", "data", "client"]
}

resource "aws_security_group" "meta" {
  name        = "${var.name}-meta"
  description = "Cirrus meta nodes: gRPC and metrics from cluster members, SSH from the admin CIDR"
  vpc_id      = local.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-meta" })
}

resource "aws_security_group" "data" {
  name        = "${var.name}-data"
  description = "Cirrus data servers: gRPC and metrics from cluster members, SSH from the admin CIDR"
  vpc_id      = local.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-data" })
}

resource "aws_security_group" "client" {
  name        = "${var.name}-client"
  description = "Cirrus clients: nothing in but SSH from the admin CIDR"
  vpc_id      = local.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-client" })
}

resource "aws_vpc_security_group_ingress_rule" "cluster" {
  for_each                     = local.cluster_port_rules
  security_group_id            = local.sg_ids[each.value.to]
  referenced_security_group_id = local.sg_ids[each.value.from]
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  description                  = "${each.value.port}/tcp ${each.value.what}"
  tags                         = local.tags
}

resource "aws_vpc_security_group_egress_rule" "cluster" {
  for_each                     = local.cluster_egress_rules
  security_group_id            = local.sg_ids[each.value.from]
  referenced_security_group_id = local.sg_ids[each.value.to]
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  description                  = "${each.value.port}/tcp ${each.value.what}"
  tags                         = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  for_each          = toset(local.roles)
  security_group_id = local.sg_ids[each.key]
  cidr_ipv4         = var.admin_cidr
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  description       = "SSH from the admin CIDR only"
  tags              = local.tags
}

# Packages (apt) and the binary download (HTTPS URL or S3). Only these two ports leave
# the cluster; nothing listens on them.
resource "aws_vpc_security_group_egress_rule" "web" {
  # checkov:skip=CKV_AWS_382: egress is limited to 80 and 443 (not all ports); apt mirrors and S3 have no fixed CIDR
  for_each          = { for p in setproduct(local.roles, [80, 443]) : "${p[0]}_${p[1]}" => { role = p[0], port = p[1] } }
  security_group_id = local.sg_ids[each.value.role]
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  description       = each.value.port == 443 ? "HTTPS: binary download, S3, apt" : "HTTP: Debian apt mirrors"
  tags              = local.tags
}
