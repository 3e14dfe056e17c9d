"""`imagepipe upload`: the command-line client. It speaks HTTP to an API and nothing else:
no server settings, no Pillow, no arq, boto3 or FastAPI, so it starts fast on a laptop.

    settings   its own few settings (IMAGEPIPE_SERVER)
    upload     find images, send them, wait for their tickets
    view       progress bars, then a table or one JSON document
"""
