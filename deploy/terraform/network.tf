# The network: a VPC with one public subnet per availability zone, or the subnets given.
# Node addresses of the meta group are fixed (cidrhost of their subnet) because raft peers
# are identified by address: a replaced meta instance comes back at the same address.

locals {
  create_vpc = length(var.subnet_ids) == 0
  az_count   = length(var.availability_zones)

  subnet_ids = local.create_vpc ? aws_subnet.cluster[*].id : var.subnet_ids
  subnet_azs = local.create_vpc ? aws_subnet.cluster[*].availability_zone : [for s in data.aws_subnet.given : s.availability_zone]
  vpc_id     = local.create_vpc ? aws_vpc.cluster[0].id : data.aws_subnet.given[0].vpc_id

  # Subnet CIDRs are known at plan time when the module creates them, so the meta
  # addresses (and therefore every node's user data) are too.
  planned_subnet_cidrs = local.create_vpc ? [for i in range(local.az_count) : cidrsubnet(var.vpc_cidr, 24 - tonumber(split("/", var.vpc_cidr)[1]), i)] : [for s in data.aws_subnet.given : s.cidr_block]
}

data "aws_subnet" "given" {
  count = local.create_vpc ? 0 : length(var.subnet_ids)
  id    = var.subnet_ids[count.index]

  lifecycle {
    postcondition {
      condition     = self.availability_zone == var.availability_zones[count.index]
      error_message = "subnet_ids[${count.index}] is not in availability_zones[${count.index}]."
    }
  }
}

resource "aws_vpc" "cluster" {
  # Flow logs need a log destination and a retention policy, which is the account's
  # logging decision, not the filesystem's.
  # checkov:skip=CKV2_AWS_11: flow logs are an account-level logging decision (comment above)
  count                = local.create_vpc ? 1 : 0
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = merge(local.tags, { Name = "${var.name}-vpc" })
}

# Takes every rule off the VPC's default security group so that nothing can use it by
# accident: every node gets one of the role groups below.
resource "aws_default_security_group" "cluster" {
  count  = local.create_vpc ? 1 : 0
  vpc_id = aws_vpc.cluster[0].id
  tags   = merge(local.tags, { Name = "${var.name}-default-unused" })
}

resource "aws_internet_gateway" "cluster" {
  count  = local.create_vpc ? 1 : 0
  vpc_id = aws_vpc.cluster[0].id
  tags   = merge(local.tags, { Name = "${var.name}-igw" })
}

resource "aws_subnet" "cluster" {
  count             = local.create_vpc ? local.az_count : 0
  vpc_id            = aws_vpc.cluster[0].id
  availability_zone = var.availability_zones[count.index]
  cidr_block        = local.planned_subnet_cidrs[count.index]
  # Public addresses are set per instance (assign_public_ips), not by the subnet.
  map_public_ip_on_launch = false
  tags                    = merge(local.tags, { Name = "${var.name}-${var.availability_zones[count.index]}" })
}

resource "aws_route_table" "cluster" {
  count  = local.create_vpc ? 1 : 0
  vpc_id = aws_vpc.cluster[0].id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.cluster[0].id
  }

  tags = merge(local.tags, { Name = "${var.name}-public" })
}

resource "aws_route_table_association" "cluster" {
  count          = local.create_vpc ? local.az_count : 0
  subnet_id      = aws_subnet.cluster[count.index].id
  route_table_id = aws_route_table.cluster[0].id
}
