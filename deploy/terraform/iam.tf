# The instance role: least privilege. It may read the one S3 object that holds the binary
# (only when cirrus_binary_s3 is given) and nothing else; Cirrus itself calls no AWS API.

resource "aws_iam_role" "node" {
  name = "${var.name}-node"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
  tags = local.tags
}

resource "aws_iam_role_policy" "binary" {
  count = var.cirrus_binary_s3 == null ? 0 : 1
  name  = "${var.name}-read-binary"
  role  = aws_iam_role.node.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid      = "ReadCirrusBinary"
      Effect   = "Allow"
      Action   = ["s3:GetObject"]
      Resource = ["arn:aws:s3:::${var.cirrus_binary_s3.bucket}/${var.cirrus_binary_s3.key}"]
    }]
  })
}

resource "aws_iam_instance_profile" "node" {
  name = "${var.name}-node"
  role = aws_iam_role.node.name
  tags = local.tags
}
