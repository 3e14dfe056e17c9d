"""Pure imaging: no Redis, no storage, no asyncio; bytes in, facts or derivatives out.

codecs     which formats this Pillow build decodes and encodes (settings ask it)
decoding   opening bytes with exactly one decoder, the pixel limit, the errors
probe      header sizes from a prefix of an upload (the API and the audit)
render     the pipeline as a list of steps (the worker's decode child)
"""
