"""Where data comes from and goes to: filesystems (local, s3://), input discovery, schema checks,
and the atomic writer every output file goes through."""
