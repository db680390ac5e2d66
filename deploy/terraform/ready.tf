# `terraform apply` does not report success before the cluster is ready: over SSH (from
# where terraform runs, allowed by admin_cidr) it waits for cloud-init and then for
# cirrus-ready (`cirrus doctor --ready`) on the first meta node and the first client.
# Any failure prints doctor's report (host, port, what was tried, the likely fix) and
# fails the apply.

locals {
  ssh_host = {
    meta   = [for i in aws_instance.meta : var.assign_public_ips ? i.public_ip : i.private_ip]
    data   = [for i in aws_instance.data : var.assign_public_ips ? i.public_ip : i.private_ip]
    client = [for i in aws_instance.client : var.assign_public_ips ? i.public_ip : i.private_ip]
  }
  ssh_opts = "-o BatchMode=yes -o StrictHostKeyChecking=accept-new -o ConnectTimeout=10"

  ready_probes = var.wait_for_ready ? merge(
    { meta = local.ssh_host.meta[0] },
    var.client_count > 0 ? { client = local.ssh_host.client[0] } : {},
  ) : {}
}

resource "terraform_data" "ready" {
  for_each         = local.ready_probes
  triggers_replace = [aws_instance.meta[*].id, aws_instance.data[*].id, aws_instance.client[*].id]

  lifecycle {
    precondition {
      condition     = var.ssh_key_name != null
      error_message = "wait_for_ready needs ssh_key_name (and the key in your ssh agent); or set wait_for_ready = false."
    }
  }

  provisioner "local-exec" {
    interpreter = ["/bin/sh", "-c"]
    command     = <<-EOT
      set -u
      end=$(( $(date +%s) + ${var.ready_timeout_seconds} ))
      until ssh ${local.ssh_opts} ${var.ssh_user}@${each.value} 'sudo cloud-init status --wait >/dev/null 2>&1; sudo systemctl start cirrus-ready.service || { sudo journalctl -u cirrus-ready.service -n 80 --no-pager; exit 2; }'; do
        rc=$?
        if [ "$rc" -eq 2 ] || [ "$(date +%s)" -ge "$end" ]; then
          echo "cirrus: ${each.key} node ${each.value} is NOT ready (cirrus doctor report above)" >&2
          exit 1
        fi
        sleep 10
      done
      echo "cirrus: ${each.key} node ${each.value} ready: cirrus doctor passed"
    EOT
  }
}
