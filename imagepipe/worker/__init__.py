"""The worker role: arq jobs that resize each photo, then call the web tier back.

app          the arq Worker for one lane, and the process that keeps it running
deps         the typed clients a worker process builds once at startup
processing   process_photo: original -> decode sandbox -> derivatives -> report
notify       the signed callback: sent inline, else a retried job of its own
sandbox      warm decode children with a memory cap and a hard deadline
"""
