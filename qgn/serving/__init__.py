"""Serving a checkpoint: a JSON API and a one-page web demo (``qgn serve``).

Needs the ``serve`` extra (``pip install 'qgn[serve]'``: FastAPI, uvicorn, python-multipart).
"""
