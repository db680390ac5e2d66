terraform {
  # 1.9: variable validations may refer to other variables; 1.7: mock_provider in tests.
  required_version = ">= 1.9"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0, < 6.0"
    }
  }
}
