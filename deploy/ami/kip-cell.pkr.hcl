# Packer template baking a Kip cell image from a stock one: it runs deploy/ami/bake.sh on an
# instance of Amazon Linux 2023, Ubuntu 24.04 or Debian 12 (variable distro), installing the
# kip-cell and runc that kip serves (the same files: kip pins their SHA-256 in every cell's
# user data, and a cell uses a baked binary only when its hash is the pinned one), the
# kip-cell systemd unit, and optionally images unpacked in the agent's store. The AMI is named
# kip-cell-<distro>-<arch>-<timestamp>, which kip's default image lookup (imageOwners [self],
# imageFilters name kip-cell-*) finds. See docs/aws.md, "A baked image".
#
#   packer init deploy/ami
#   packer build -var distro=al2023 -var kip_cell=bin/kip-cell -var runc=/usr/sbin/runc \
#     -var 'images=["public.ecr.aws/docker/library/busybox:1.36"]' deploy/ami/kip-cell.pkr.hcl

packer {
  required_plugins {
    amazon = {
      version = ">= 1.3.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}

variable "distro" {
  type        = string
  default     = "al2023"
  description = "The stock image to start from: al2023, ubuntu2404 or debian12."
  validation {
    condition     = contains(["al2023", "ubuntu2404", "debian12"], var.distro)
    error_message = "The distro must be al2023, ubuntu2404 or debian12."
  }
}

variable "arch" {
  type        = string
  default     = "x86_64"
  description = "EC2 architecture: x86_64 or arm64; kip_cell and runc must be built for it."
  validation {
    condition     = contains(["x86_64", "arm64"], var.arch)
    error_message = "The arch must be x86_64 or arm64."
  }
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "instance_type" {
  type        = string
  default     = ""
  description = "Build instance type; empty: t3.small (x86_64) or t4g.small (arm64)."
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet of the build instance; empty: the default VPC's. It must reach the internet (or the registries of images) and let Packer's SSH in."
}

variable "kip_cell" {
  type        = string
  description = "Path of the kip-cell binary to bake: the one kip serves (cloud.aws.bootstrap.agentPaths), built with CGO_ENABLED=0."
}

variable "runc" {
  type        = string
  description = "Path of the runc binary to bake: the one kip serves (cloud.aws.bootstrap.runcPaths)."
}

variable "images" {
  type        = list(string)
  default     = []
  description = "Images to unpack into the agent's store (/var/lib/kip-cell/images), pulled anonymously."
}

variable "insecure_registries" {
  type        = list(string)
  default     = []
  description = "Registries (host:port) of images reached over plain HTTP."
}

variable "volume_size" {
  type    = number
  default = 8
}

locals {
  # Owner and name pattern of each stock image, per distro.
  stock = {
    al2023     = { owners = ["amazon"], name = "al2023-ami-2023.*-kernel-6.1-${var.arch}", user = "ec2-user" }
    ubuntu2404 = { owners = ["099720109477"], name = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-${var.arch == "x86_64" ? "amd64" : "arm64"}-server-*", user = "ubuntu" }
    debian12   = { owners = ["136693071363"], name = "debian-12-${var.arch == "x86_64" ? "amd64" : "arm64"}-*", user = "admin" }
  }
  instance_type = var.instance_type != "" ? var.instance_type : (var.arch == "x86_64" ? "t3.small" : "t4g.small")
  timestamp     = formatdate("YYYYMMDDhhmmss", timestamp())
  bake_args = join(" ", concat(
    ["--kip-cell /tmp/kip-cell", "--runc /tmp/runc"],
    [for i in var.images : "--image '${i}'"],
    [for r in var.insecure_registries : "--insecure-registry '${r}'"],
  ))
}

source "amazon-ebs" "kip-cell" {
  region        = var.region
  instance_type = local.instance_type
  subnet_id     = var.subnet_id != "" ? var.subnet_id : null
  ssh_username  = local.stock[var.distro].user
  ami_name      = "kip-cell-${var.distro}-${var.arch}-${local.timestamp}"
  source_ami_filter {
    owners      = local.stock[var.distro].owners
    most_recent = true
    filters = {
      name                = local.stock[var.distro].name
      architecture        = var.arch
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
  }
  # IMDSv2 only on the build instance too.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  launch_block_device_mappings {
    device_name           = var.distro == "ubuntu2404" ? "/dev/sda1" : "/dev/xvda"
    volume_size           = var.volume_size
    volume_type           = "gp3"
    delete_on_termination = true
  }
  tags = {
    Name              = "kip-cell-${var.distro}-${var.arch}"
    "kip.dev/distro"  = var.distro
    "kip.dev/baked"   = local.timestamp
  }
}

build {
  sources = ["source.amazon-ebs.kip-cell"]

  provisioner "file" {
    source      = var.kip_cell
    destination = "/tmp/kip-cell"
  }
  provisioner "file" {
    source      = var.runc
    destination = "/tmp/runc"
  }
  provisioner "file" {
    source      = "${path.root}/bake.sh"
    destination = "/tmp/bake.sh"
  }
  provisioner "shell" {
    inline = [
      "sudo sh /tmp/bake.sh --root / ${local.bake_args}",
      "rm -f /tmp/kip-cell /tmp/runc /tmp/bake.sh",
      # Each instance of the image runs its user data afresh.
      "sudo cloud-init clean --logs",
    ]
  }
}
