# A whole Cirrus cluster in one `terraform apply`: 3 meta nodes over 3 zones, 3 data
# servers on NVMe instance storage and 1 client in a cluster placement group. The apply
# finishes only when `cirrus doctor` passes on the first meta node and the client.
#
#   terraform init
#   terraform apply -var admin_cidr=198.51.100.7/32 -var ssh_key_name=ops \
#     -var cirrus_binary_url=https://.../cirrus

terraform {
  required_version = ">= 1.9"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0, < 6.0"
    }
  }
}

provider "aws" {
  region = var.region
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "availability_zones" {
  description = "Three zones of the region, one meta node in each."
  type        = list(string)
  default     = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
}

variable "admin_cidr" {
  description = "Your address (x.x.x.x/32): the only source allowed in, on SSH."
  type        = string
}

variable "ssh_key_name" {
  description = "Existing EC2 key pair; keep its key in your ssh agent (the apply waits over SSH)."
  type        = string
}

variable "cirrus_binary_url" {
  description = "HTTPS URL of the cirrus release binary (linux x86_64)."
  type        = string
}

variable "data_count" {
  description = "Number of data servers."
  type        = number
  default     = 3
}

variable "client_count" {
  description = "Number of clients."
  type        = number
  default     = 1
}

module "cirrus" {
  source = "../.."

  name               = "cirrus-demo"
  region             = var.region
  availability_zones = var.availability_zones
  admin_cidr         = var.admin_cidr
  ssh_key_name       = var.ssh_key_name
  cirrus_binary_url  = var.cirrus_binary_url
  data_count         = var.data_count
  client_count       = var.client_count
  data_storage       = "nvme"
  placement_group    = true
}

output "meta_endpoints" {
  description = "gRPC endpoints of the meta nodes."
  value       = module.cirrus.meta_endpoints
}

output "mount_command" {
  description = "Mount command (clients mount at boot already)."
  value       = module.cirrus.mount_command
}

output "doctor_command" {
  description = "Check every endpoint from any node."
  value       = module.cirrus.doctor_command
}

output "ssh_commands" {
  description = "SSH into each node, by role."
  value       = module.cirrus.ssh_commands
}
