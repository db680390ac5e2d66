#!/bin/sh
# Records this node's private address (IMDSv2) for the units that bind to it.
set -eu
imds=http://169.254.169.254/latest
token=$(curl -sSf --max-time 5 --retry 10 --retry-connrefused -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "$imds/api/token")
ip=$(curl -sSf --max-time 5 --retry 10 -H "X-aws-ec2-metadata-token: $token" "$imds/meta-data/local-ipv4")
mkdir -p /run/cirrus
printf 'CIRRUS_IP=%s\n' "$ip" > /run/cirrus/node.env.tmp
mv /run/cirrus/node.env.tmp /run/cirrus/node.env
