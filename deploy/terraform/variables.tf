# Inputs of the Cirrus module. Every default is what the README walk-through uses; the
# ports are the table of the README and DESIGN.md, and the security groups open exactly
# these.

variable "name" {
  description = "Prefix of every resource name and the Name tag."
  type        = string
  default     = "cirrus"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,23}$", var.name))
    error_message = "name must be 1-24 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "region" {
  description = "AWS region of the cluster; must be the region of the aws provider. Used to sign the S3 download of the binary."
  type        = string
}

variable "availability_zones" {
  description = "Availability zones to use, one subnet each. The three meta nodes go round-robin over them (give three for a group that survives the loss of a zone); data servers and clients go to the first when the placement group is on."
  type        = list(string)

  validation {
    condition     = length(var.availability_zones) >= 1 && length(var.availability_zones) <= 6 && length(distinct(var.availability_zones)) == length(var.availability_zones)
    error_message = "availability_zones must list 1 to 6 distinct zones."
  }
}

variable "vpc_cidr" {
  description = "CIDR of the VPC the module creates (ignored when subnet_ids is given). Each zone gets a /24 of it."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr must be an IPv4 CIDR of /20 or larger."
  }
}

variable "subnet_ids" {
  description = "Existing subnets to use instead of creating a VPC: one per entry of availability_zones, in the same order. They need a route to the internet (IGW or NAT) for package and binary downloads."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.subnet_ids) == 0 || length(var.subnet_ids) == length(var.availability_zones)
    error_message = "subnet_ids must be empty (create a VPC) or give one subnet per availability zone, in the same order."
  }
}

variable "meta_count" {
  description = "Number of meta (raft) nodes. Cirrus runs exactly three voters."
  type        = number
  default     = 3

  validation {
    condition     = var.meta_count == 3
    error_message = "meta_count must be 3: the meta group is three raft voters (DESIGN.md)."
  }
}

variable "data_count" {
  description = "Number of data servers (N >= 2)."
  type        = number
  default     = 3

  validation {
    condition     = var.data_count >= 2 && floor(var.data_count) == var.data_count
    error_message = "data_count must be a whole number of at least 2."
  }
}

variable "client_count" {
  description = "Number of client machines that mount the filesystem (M >= 0)."
  type        = number
  default     = 1

  validation {
    condition     = var.client_count >= 0 && floor(var.client_count) == var.client_count
    error_message = "client_count must be a whole number of at least 0."
  }
}

variable "replicas" {
  description = "Replication factor R of the chains (1..3, at most data_count)."
  type        = number
  default     = 2

  validation {
    condition     = var.replicas >= 1 && var.replicas <= 3 && var.replicas <= var.data_count
    error_message = "replicas must be 1..3 and not more than data_count."
  }
}

variable "meta_instance_type" {
  description = "Instance type of the meta nodes."
  type        = string
  default     = "m6i.large"
}

variable "data_instance_type" {
  description = "Instance type of the data servers. With data_storage = \"nvme\" it must have NVMe instance storage (i4i, i3en, c6id, m6id, ...)."
  type        = string
  default     = "i4i.xlarge"
}

variable "client_instance_type" {
  description = "Instance type of the clients."
  type        = string
  default     = "c6in.xlarge"
}

variable "ami_id" {
  description = "AMI for every node; null picks the latest official Debian 12 amd64 image (the cloud-init and units assume systemd and apt)."
  type        = string
  default     = null
}

variable "cirrus_binary_url" {
  description = "HTTPS URL of the cirrus binary (exactly one of cirrus_binary_url and cirrus_binary_s3)."
  type        = string
  default     = null

  validation {
    condition     = var.cirrus_binary_url == null || can(regex("^https://", var.cirrus_binary_url))
    error_message = "cirrus_binary_url must be an https:// URL."
  }
}

variable "cirrus_binary_s3" {
  description = "S3 object holding the cirrus binary (exactly one of cirrus_binary_url and cirrus_binary_s3). The instance role may read this one object and nothing else."
  type = object({
    bucket = string
    key    = string
  })
  default = null

  validation {
    condition     = (var.cirrus_binary_s3 == null) != (var.cirrus_binary_url == null)
    error_message = "Give exactly one of cirrus_binary_url and cirrus_binary_s3."
  }
}

variable "cirrus_binary_sha256" {
  description = "Expected SHA-256 of the binary (hex). When set, a node refuses to install a binary that differs."
  type        = string
  default     = null

  validation {
    condition     = var.cirrus_binary_sha256 == null || can(regex("^[0-9a-f]{64}$", var.cirrus_binary_sha256))
    error_message = "cirrus_binary_sha256 must be 64 lowercase hex digits."
  }
}

variable "ssh_key_name" {
  description = "Name of an existing EC2 key pair for SSH (null: no key; then SSH only works through other means and wait_for_ready must be false)."
  type        = string
  default     = null
}

variable "ssh_user" {
  description = "Login user of the AMI (Debian: admin)."
  type        = string
  default     = "admin"
}

variable "admin_cidr" {
  description = "The only network allowed to reach the cluster from outside, and only on SSH (22/tcp)."
  type        = string

  validation {
    condition     = can(cidrhost(var.admin_cidr, 0)) && var.admin_cidr != "0.0.0.0/0"
    error_message = "admin_cidr must be an IPv4 CIDR and not 0.0.0.0/0: SSH is never open to the world."
  }
}

variable "assign_public_ips" {
  description = "Give every node a public IP (SSH from admin_cidr, downloads without a NAT). Set false with your own subnets that have a NAT and a bastion."
  type        = bool
  default     = true
}

variable "data_storage" {
  description = "Where data servers keep objects: \"nvme\" (instance store, striped and formatted XFS at every boot because it is empty after stop/start; replication keeps the data) or \"ebs\" (one gp3 volume, formatted XFS on first boot)."
  type        = string
  default     = "nvme"

  validation {
    condition     = contains(["nvme", "ebs"], var.data_storage)
    error_message = "data_storage must be \"nvme\" or \"ebs\"."
  }
}

variable "data_ebs" {
  description = "gp3 volume of each data server when data_storage = \"ebs\"."
  type = object({
    size_gb    = number
    iops       = number
    throughput = number
  })
  default = {
    size_gb    = 500
    iops       = 6000
    throughput = 500
  }
}

variable "root_volume_size_gb" {
  description = "Root volume (gp3, encrypted) of every node; the meta raft log and snapshots live here."
  type        = number
  default     = 30
}

variable "kms_key_id" {
  description = "KMS key ARN for the EBS volumes; null uses the account's default EBS key (still encrypted)."
  type        = string
  default     = null
}

variable "placement_group" {
  description = "Put data servers and clients in one cluster placement group (the data path) in the first zone. Meta nodes always spread over the zones."
  type        = bool
  default     = true
}

variable "ports" {
  description = "Cirrus ports (README table). The security groups open exactly these between members."
  type = object({
    meta_grpc    = number
    meta_metrics = number
    data_grpc    = number
    data_metrics = number
  })
  default = {
    meta_grpc    = 7001
    meta_metrics = 7002
    data_grpc    = 7101
    data_metrics = 7102
  }
}

variable "mountpoint" {
  description = "Where clients mount the filesystem."
  type        = string
  default     = "/mnt/cirrus"

  validation {
    condition     = can(regex("^/[A-Za-z0-9._/-]+$", var.mountpoint))
    error_message = "mountpoint must be an absolute path of letters, digits, '.', '_', '-' and '/'."
  }
}

variable "wait_for_ready" {
  description = "Make `terraform apply` wait (over SSH from where it runs) until `cirrus doctor` passes on the first meta node and the first client, and fail otherwise."
  type        = bool
  default     = true
}

variable "ready_timeout_seconds" {
  description = "How long each node's final readiness check (and wait_for_ready) waits for `cirrus doctor` to pass."
  type        = number
  default     = 900
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}
