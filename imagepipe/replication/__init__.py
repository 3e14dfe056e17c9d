"""Copying every object to backup, and proving that every piece of async work finished.

log          the replication log: appended at accept and at indexing, consumed here
replicator   the role: claim -> copy primary to backup -> verify -> ack, forever
audit        one pass: stuck tickets, unprocessed originals, missing backup copies
report       what `imagepipe audit` prints
gauges       the system-wide gauges every role's /metrics reads from Redis
"""
