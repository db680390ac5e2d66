output "meta_endpoints" {
  description = "gRPC endpoints (host:port) of the three meta nodes."
  value       = [for ip in local.meta_ips : "${ip}:${var.ports.meta_grpc}"]
}

output "meta_addrs" {
  description = "The meta endpoints as one argument for `cirrus mount`, `cirrus status --meta` and `cirrus doctor --meta`."
  value       = local.meta_addrs
}

output "meta_azs" {
  description = "Availability zone of each meta node."
  value       = aws_instance.meta[*].availability_zone
}

output "data_private_ips" {
  description = "Private addresses of the data servers (gRPC on ports.data_grpc)."
  value       = aws_instance.data[*].private_ip
}

output "mount_command" {
  description = "Mount the filesystem on a client (the clients do this at boot through cirrus-mount.service)."
  value       = "sudo cirrus mount ${local.meta_addrs} ${var.mountpoint}"
}

output "doctor_command" {
  description = "Check every endpoint from any node."
  value       = "sudo cirrus doctor --meta ${local.meta_addrs}"
}

output "ssh_commands" {
  description = "SSH into each node, by role."
  value = {
    for role, hosts in local.ssh_host : role => [for h in hosts : "ssh ${var.ssh_user}@${h}"]
  }
}

output "security_group_ids" {
  description = "Security group of each role."
  value       = local.sg_ids
}

locals {
  sg_role = { for role, id in local.sg_ids : id => role }

  # Read back from the rule resources themselves (not from the locals that built them),
  # so that `terraform test` checks what would really be created.
  ingress_rules = sort(concat(
    [for r in aws_vpc_security_group_ingress_rule.cluster : "${local.sg_role[r.security_group_id]} ${r.from_port}-${r.to_port}/${r.ip_protocol} from sg:${local.sg_role[r.referenced_security_group_id]}"],
    [for r in aws_vpc_security_group_ingress_rule.ssh : "${local.sg_role[r.security_group_id]} ${r.from_port}-${r.to_port}/${r.ip_protocol} from cidr:${r.cidr_ipv4}"],
  ))
  egress_rules = sort(concat(
    [for r in aws_vpc_security_group_egress_rule.cluster : "${local.sg_role[r.security_group_id]} ${r.from_port}-${r.to_port}/${r.ip_protocol} to sg:${local.sg_role[r.referenced_security_group_id]}"],
    [for r in aws_vpc_security_group_egress_rule.web : "${local.sg_role[r.security_group_id]} ${r.from_port}-${r.to_port}/${r.ip_protocol} to cidr:${r.cidr_ipv4}"],
  ))
}

output "ingress_rules" {
  description = "Every ingress rule, one line each: \"<group> <ports>/<proto> from sg:<group>|cidr:<cidr>\"."
  value       = local.ingress_rules
}

output "egress_rules" {
  description = "Every egress rule, one line each: \"<group> <ports>/<proto> to sg:<group>|cidr:<cidr>\"."
  value       = local.egress_rules
}
